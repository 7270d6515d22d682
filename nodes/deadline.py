"""One meaning for ``REDRAFT_REQUEST_TIMEOUT``: the most one model request may take, from sending it to its last
byte -- streamed or not -- and ``REDRAFT_CONNECT_TIMEOUT`` for opening the connection.

httpx's own timeouts (httpx2 here, as the OpenAI client uses) bound each *operation* (a connect, a write, one read):
a streamed reply that keeps trickling tokens never times out, and a non-streamed one may take up to the read timeout
per chunk of its body. This transport
gives every request attempt a deadline that covers waiting for the headers and reading the whole body. When it
passes, the attempt fails with ``httpx.ReadTimeout``: before the reply started, the OpenAI client retries it
(``REDRAFT_MAX_RETRIES``, each retry with a fresh deadline) as any timeout; in the middle of a streamed reply it ends
the call (``nodes/model.py`` turns it into a retryable ``model_error``), since a half-streamed reply is not retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx2 as httpx  # the OpenAI client's HTTP library (a fork of httpx), whose types its client takes
import openai


class _DeadlineStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, deadline: float, request: httpx.Request, seconds: float) -> None:
        self.inner = inner
        self.deadline = deadline
        self.request = request
        self.seconds = seconds

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self.inner.__aiter__()
        while True:
            try:
                async with asyncio.timeout_at(self.deadline):
                    chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise _expired(self.request, self.seconds) from None
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class DeadlineTransport(httpx.AsyncBaseTransport):
    """Wraps a transport so that each request, its whole body included, ends within ``seconds``."""

    def __init__(self, inner: httpx.AsyncBaseTransport, seconds: float) -> None:
        self.inner = inner
        self.seconds = seconds

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        deadline = asyncio.get_running_loop().time() + self.seconds
        try:
            async with asyncio.timeout_at(deadline):
                response = await self.inner.handle_async_request(request)
        except TimeoutError:
            raise _expired(request, self.seconds) from None
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _DeadlineStream(response.stream, deadline, request, self.seconds)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def _expired(request: httpx.Request, seconds: float) -> httpx.ReadTimeout:
    return httpx.ReadTimeout(f"no complete reply within REDRAFT_REQUEST_TIMEOUT ({seconds:g} s)", request=request)


def model_timeout(request_timeout: float, connect_timeout: float) -> httpx.Timeout:
    """The OpenAI client's per-request timeout: ``connect_timeout`` (never more than the request's own deadline) for
    opening a connection; each other operation is bounded by the request's deadline anyway."""
    return httpx.Timeout(request_timeout, connect=min(connect_timeout, request_timeout))


def model_http_client(request_timeout: float, connect_timeout: float) -> httpx.AsyncClient:
    """The HTTP client for one chat client: OpenAI's defaults (connection limits, redirects) and the per-request
    deadline."""
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)  # the OpenAI client's own
    transport = DeadlineTransport(httpx.AsyncHTTPTransport(limits=limits), request_timeout)
    return openai.DefaultAsyncHttpxClient(transport=transport, timeout=model_timeout(request_timeout, connect_timeout))
