"""One model call (nodes/model.py ``ask``), measured: count, latency, tokens in and out and errors by kind, by role
(draft, critique, revise) and model; a GenAI-convention CLIENT span when tracing is on; a DEBUG log line.

Usage::

    with ModelCall(runnable, "draft") as call:
        reply = await runnable.ainvoke(messages)
        call.replied(reply)

The error kind is read from the exception (or, for a ``ModelError`` translated from a client error with ``raise ...
from None``, from the client error it replaced): a bounded set of names, never a message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from redraft.observability import metrics, traces

log = logging.getLogger("redraft.model")

_KINDS = {
    "RateLimitError": "rate_limited",
    "APITimeoutError": "timeout",
    "TimeoutException": "timeout",
    "APIConnectionError": "connection",
    "ConnectError": "connection",
    "AuthenticationError": "auth",
    "PermissionDeniedError": "auth",
    "APIResponseValidationError": "malformed",
    "JSONDecodeError": "malformed",
    "DecodingError": "malformed",
    "KeyError": "malformed",
    "TypeError": "malformed",
    "ContextOverflowError": "context_overflow",
}


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if type(exc).__name__ == "ContextOverflowError":
        return "context_overflow"
    for candidate in (exc, exc.__cause__, exc.__context__):
        if candidate is None:
            continue
        kind = _KINDS.get(type(candidate).__name__)
        if kind:
            return kind
        status = getattr(candidate, "status_code", None)
        if isinstance(status, int):
            return "http_5xx" if status >= 500 else "http_4xx"
        if type(candidate).__name__ == "APIError":
            return "server_error"  # an error event inside a streamed reply
    return "other"


def _describe(runnable: Any) -> tuple[Any, dict[str, Any]]:
    """The chat client behind a (bound) runnable, and the per-call arguments bound to it. (A ``RunnableBinding``
    keeps ``bound`` and ``kwargs`` among its fields; looking them up with ``hasattr`` on a pydantic model that lacks
    them would raise and catch an exception per call.)"""
    client, bound = runnable, {}
    while "bound" in getattr(client, "__dict__", ()) and "kwargs" in client.__dict__:
        bound = {**client.kwargs, **bound}
        client = client.bound
    return client, bound


def _server(client: Any) -> tuple[str | None, int | None]:
    base = getattr(client, "openai_api_base", None) or "https://api.openai.com/v1"
    try:
        parts = urlsplit(base)
        return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None, None


def usage_of(reply: Any) -> tuple[int | None, int | None]:
    usage = getattr(reply, "usage_metadata", None) or {}
    return usage.get("input_tokens"), usage.get("output_tokens")


class ModelCall:
    __slots__ = ("bound", "client", "model", "reply", "role", "span", "started", "token")

    def __init__(self, runnable: Any, role: str) -> None:
        self.client, self.bound = _describe(runnable)
        self.model = str(getattr(self.client, "model_name", None) or getattr(self.client, "model", None) or "unknown")
        self.role = role
        self.span = self.token = self.reply = None

    def __enter__(self) -> ModelCall:
        if traces.ENABLED:
            host, port = _server(self.client)
            self.span, self.token = traces.start_span(
                f"chat {self.model}",
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.system": "openai",  # the attribute's name before semantic conventions 1.37
                    "gen_ai.request.model": self.model,
                    "gen_ai.request.temperature": self.bound.get("temperature"),
                    "gen_ai.request.top_p": self.bound.get("top_p"),
                    "gen_ai.request.max_tokens": self.bound.get("max_tokens"),
                    "gen_ai.request.seed": self.bound.get("seed"),
                    "server.address": host,
                    "server.port": port,
                    "redraft.role": self.role,
                },
                client=True,
            )
        self.started = time.perf_counter()
        return self

    def replied(self, reply: Any) -> None:
        self.reply = reply

    def __exit__(self, exc_type, exc, tb) -> None:
        elapsed = time.perf_counter() - self.started
        tokens_in, tokens_out = usage_of(self.reply)
        kind = error_kind(exc) if exc is not None else None
        m = metrics.current()
        if m is not None:
            calls, latency, input_tokens, output_tokens = m.model_series(self.role, self.model)
            calls.inc()
            latency.observe(elapsed)
            if tokens_in:
                input_tokens.inc(tokens_in)
            if tokens_out:
                output_tokens.inc(tokens_out)
            if kind is not None:
                m.model_errors.labels(self.role, metrics.model_label(self.model), kind).inc()
        if self.span is not None:
            self._finish_span(tokens_in, tokens_out, exc, kind)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "model call %s (%s) %s",
                self.role,
                self.model,
                kind or "ok",
                extra={"code": kind, "duration": round(elapsed, 6), "model": self.model, "role": self.role},
            )

    def _finish_span(self, tokens_in: int | None, tokens_out: int | None, exc: BaseException | None, kind: str | None):
        span = self.span
        if self.reply is not None:
            meta = getattr(self.reply, "response_metadata", None) or {}
            if meta.get("model_name"):
                span.set_attribute("gen_ai.response.model", str(meta["model_name"]))
            if meta.get("finish_reason"):
                span.set_attribute("gen_ai.response.finish_reasons", [str(meta["finish_reason"])])
            if getattr(self.reply, "id", None):
                span.set_attribute("gen_ai.response.id", str(self.reply.id))
        if tokens_in is not None:
            span.set_attribute("gen_ai.usage.input_tokens", int(tokens_in))
        if tokens_out is not None:
            span.set_attribute("gen_ai.usage.output_tokens", int(tokens_out))
        traces.end_span(span, self.token, exc, kind)
