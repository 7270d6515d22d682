"""REQUEST_TIMEOUT means one thing, streamed or not: the most one model request may take, to its last token.
CONNECT_TIMEOUT bounds opening the connection. Real HTTP: a local server that trickles a streamed reply or never
answers, and a listening socket whose backlog is full (a connect that hangs)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time

import pytest
from langchain_core.messages import HumanMessage

from redraft.errors import ModelError
from redraft.nodes.model import ModelProvider, ask
from redraft.settings import load_settings

MESSAGES = [HumanMessage("Say something.")]


def chunk(text: str, finish: str | None = None) -> bytes:
    delta = {"content": text} if text else {}
    body = {"id": "t", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    body["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    return f"data: {json.dumps(body)}\n\n".encode()


@contextlib.asynccontextmanager
async def slow_server(pieces: int, gap: float):
    """An OpenAI-compatible endpoint: a streamed request gets ``pieces`` words ``gap`` s apart (always within the
    read timeout); a non-streamed one gets its reply after ``pieces * gap`` s. Counts requests."""
    requests: list[bool] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
            stream = json.loads(await reader.readexactly(length)).get("stream", False)
            requests.append(stream)
            if stream:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
                for i in range(pieces):
                    writer.write(chunk(f"word{i} "))
                    await writer.drain()
                    await asyncio.sleep(gap)
                writer.write(chunk("", "stop") + b"data: [DONE]\n\n")
            else:
                await asyncio.sleep(pieces * gap)
                reply = {"id": "t", "object": "chat.completion", "created": 0, "model": "m"}
                message = {"role": "assistant", "content": "late"}
                reply["choices"] = [{"index": 0, "message": message, "finish_reason": "stop"}]
                raw = json.dumps(reply).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
                writer.write(f"content-length: {len(raw)}\r\nconnection: close\r\n\r\n".encode() + raw)
            await writer.drain()
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1", requests
    finally:
        server.close()


def provider(base_url: str, **settings) -> ModelProvider:
    return ModelProvider(load_settings(base_url=base_url, model="m", api_key="k", **settings))


async def test_a_trickling_streamed_reply_is_bounded_by_the_request_timeout():
    # 40 words 0.1 s apart: 4 s in all, though no single read ever waits more than 0.1 s
    async with slow_server(pieces=40, gap=0.1) as (url, requests):
        model = provider(url, request_timeout=1.0, max_retries=0).get({"model": "m"})
        started = time.monotonic()
        with pytest.raises(ModelError, match=r"timed out (during|on) the critique") as caught:
            await ask(model.bind(stream=True), MESSAGES, "critique")
        took = time.monotonic() - started
        assert 0.9 < took < 3.0, took
        assert caught.value.retryable and requests == [True]
        # the same endpoint within the timeout: the whole streamed reply arrives
        model = provider(url, request_timeout=30.0, max_retries=0).get({"model": "m"})
        text, finish = await ask(model.bind(stream=True), MESSAGES, "critique")
        assert text.split()[-1] == "word39" and finish == "stop"


async def test_a_slow_unstreamed_reply_times_out_per_attempt_and_is_retried():
    async with slow_server(pieces=20, gap=0.1) as (url, requests):  # the reply comes after 2 s
        model = provider(url, request_timeout=0.5, max_retries=1).get({"model": "m"})
        started = time.monotonic()
        with pytest.raises(ModelError, match="timed out on the draft request"):
            await ask(model, MESSAGES, "draft")
        took = time.monotonic() - started
        assert requests == [False, False]  # the attempt and one retry, each with its own 0.5 s
        assert 0.9 < took < 4.0, took


async def test_the_connect_timeout_is_separate_from_the_request_timeout():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))  # the backlog is full: the next connect hangs
    try:
        model = provider(f"http://127.0.0.1:{port}/v1", request_timeout=30.0, connect_timeout=0.5, max_retries=0)
        started = time.monotonic()
        with pytest.raises(ModelError, match="timed out"):
            await ask(model.get({"model": "m"}), MESSAGES, "draft")
        assert time.monotonic() - started < 5.0  # 0.5 s, not the 30 s request timeout
    finally:
        filler.close()
        listener.close()
