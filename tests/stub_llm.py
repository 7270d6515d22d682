"""A local OpenAI-compatible chat-completions server for tests and benchmarks (stdlib only, runs in a thread).

What it answers, and its settings (``DEFAULTS``), are in tests/stub_answers.py: a draft seeded by the query,
critiques round by round (or the stop phrase, or scored JSON), revisions that converge, deterministic embeddings.

Faults (429 with Retry-After, 500, timeouts, malformed JSON, empty content, context overflow with a real server's
error body, replies cut at max_tokens) are queued with ``fail`` and consumed by the next matching requests. Every
request is recorded (``requests``, with its sampling parameters), so tests can assert on real prompts. Other
processes configure it over HTTP: ``POST /_control`` and ``GET /_requests``.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.stub_answers import DEFAULTS, answer, embedding, node_of, overflow_body, usage_for


class StubLLM:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config: dict[str, Any] = dict(DEFAULTS)
        self.faults: list[dict] = []
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def handle(self) -> None:
                try:
                    super().handle()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): nothing to answer

            def do_GET(self) -> None:
                if self.path.startswith("/_requests"):
                    with stub.lock:
                        self._json(200, stub.requests)
                else:
                    self._json(404, {"error": "not found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.startswith("/_control"):
                    stub.configure(**body.get("config", {}))
                    if "faults" in body:
                        stub.faults = list(body["faults"])
                    if body.get("reset_requests"):
                        stub.requests.clear()
                    self._json(200, {"ok": True})
                    return
                if self.path.endswith("/embeddings"):
                    stub.embed(self, body)
                    return
                if not self.path.endswith("/chat/completions"):
                    self._json(404, {"error": {"message": "not found"}})
                    return
                stub.handle(self, body)

            def _json(self, status: int, data: Any, headers: dict | None = None) -> None:
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> StubLLM:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def configure(self, **config: Any) -> None:
        with self.lock:
            self.config.update(config)

    def reset(self) -> None:
        with self.lock:
            self.config = dict(DEFAULTS)
            self.faults.clear()
            self.requests.clear()

    def fail(self, *faults: dict) -> None:
        """Queue faults: {"status": 429, "retry_after": 0} | {"status": 500} | {"sleep": s} | {"malformed": True} |
        {"empty": True} | {"context_overflow": True | "llama.cpp" | "llama-cpp-python" | "openai" | "vllm" | body} (HTTP
        400 with that server's body; with "mid_stream": True a streamed request gets it as an SSE error event after
        HTTP 200, with "empty_stream": True an empty event stream, as llama-cpp-python does) |
        {"truncate": n} (the first n words, finish_reason "length"); each may carry "node" to hit only that node."""
        with self.lock:
            self.faults.extend(faults)

    def prompts(self, node: str) -> list[list[dict]]:
        with self.lock:
            return [r["messages"] for r in self.requests if r["node"] == node]

    # --- answering ------------------------------------------------------------------------------------------------

    def answer(self, node: str, messages: list[dict]) -> str:
        return answer(self.config, node, messages)

    def handle(self, handler: BaseHTTPRequestHandler, body: dict) -> None:
        messages = body.get("messages", [])
        node = node_of(messages)
        with self.lock:
            keys = ("model", "temperature", "top_p", "seed", "max_tokens", "max_completion_tokens")
            sampling = {k: body[k] for k in keys if k in body}
            self.requests.append(
                {
                    "node": node,
                    "messages": messages,
                    "stream": bool(body.get("stream")),
                    "sampling": sampling,
                    "authorization": handler.headers.get("authorization"),
                    "response_format": body.get("response_format"),
                }
            )
            rejected = self.config["reject_response_format"]
            kind = (body.get("response_format") or {}).get("type")
            if kind and rejected is True:
                handler._json(400, {"error": {"message": "response_format is not supported", "type": "stub"}})
                return
            if kind and isinstance(rejected, dict) and kind in rejected:
                expected = "Input should be 'text' or 'json_object'"
                message = f"1 validation error: body.response_format.type: {expected}, got {kind!r}"
                handler._json(rejected[kind], {"error": {"message": message, "type": "stub"}})
                return
            fault = next((f for f in self.faults if f.get("node") in (None, node)), None)
            if fault is not None:
                self.faults.remove(fault)
            latency = self.config["latency_ms"] / 1000
        if latency:
            time.sleep(latency)
        if fault is not None:
            if "sleep" in fault:
                time.sleep(fault["sleep"])
            elif "status" in fault:
                headers = {"retry-after": str(fault["retry_after"])} if "retry_after" in fault else {}
                handler._json(fault["status"], {"error": {"message": "injected", "type": "stub"}}, headers)
                return
            elif fault.get("context_overflow"):
                error = overflow_body(fault["context_overflow"])
                if fault.get("mid_stream") and body.get("stream"):
                    self._stream(handler, body.get("model", "stub"), "", error=error.get("error", error))
                elif fault.get("empty_stream") and body.get("stream"):
                    self._empty_stream(handler)
                else:
                    handler._json(400, error)
                return
            elif fault.get("malformed"):
                raw = b'{"id": "x", "choices": [{"message": {"content": '
                handler.send_response(200)
                handler.send_header("content-type", "application/json")
                handler.send_header("content-length", str(len(raw)))
                handler.end_headers()
                handler.wfile.write(raw)
                return
        content = "" if fault is not None and fault.get("empty") else self.answer(node, messages)
        finish = "stop"
        if fault is not None and "truncate" in fault:
            content, finish = " ".join(content.split()[: fault["truncate"]]), "length"
        limit = body.get("max_tokens")
        if self.config["honour_max_tokens"] and isinstance(limit, int) and len(content.split()) > limit:
            content, finish = " ".join(content.split()[:limit]), "length"
        model = body.get("model", "stub")
        with self.lock:
            usage = usage_for(self.config, messages, content)
        if body.get("stream"):
            wanted = (body.get("stream_options") or {}).get("include_usage")
            self._stream(
                handler, model, content, finish, usage=usage if wanted else None, spread=self.config["stream_ms"] / 1000
            )
            return
        handler._json(
            200,
            {
                "id": "chatcmpl-stub",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}
                ],
                **({"usage": usage} if usage is not None else {}),
            },
        )

    def embed(self, handler: BaseHTTPRequestHandler, body: dict) -> None:
        """POST /v1/embeddings: one ``embedding`` per input text, as floats or (the openai client's default) base64."""
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else list(texts or [])
        with self.lock:
            self.requests.append({"node": "embeddings", "input": texts, "model": body.get("model")})
            available = self.config["embeddings"]
        if not available:
            handler._json(404, {"error": {"message": "not found"}})
            return
        data = []
        for i, text in enumerate(texts):
            vector = embedding(text if isinstance(text, str) else " ".join(map(str, text)))
            if body.get("encoding_format") == "base64":
                vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": vector})
        usage = {"prompt_tokens": len(texts), "total_tokens": len(texts)}
        handler._json(200, {"object": "list", "data": data, "model": body.get("model", "stub"), "usage": usage})

    @staticmethod
    def _empty_stream(handler: BaseHTTPRequestHandler) -> None:
        """What llama-cpp-python sends for a streamed request over its context window: HTTP 200, no events at all."""
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("connection", "close")
        handler.end_headers()
        handler.wfile.flush()
        handler.close_connection = True

    @staticmethod
    def _stream(
        handler: BaseHTTPRequestHandler,
        model: str,
        content: str,
        finish: str = "stop",
        error: dict | None = None,
        usage: dict | None = None,
        spread: float = 0.0,
    ) -> None:
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("connection", "close")
        handler.end_headers()
        pieces = re.findall(r"\S+\s*", content) or [""]
        for i, piece in enumerate(pieces):
            delta = {"content": piece} if i else {"role": "assistant", "content": piece}
            chunk = {
                "id": "s",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }
            handler.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if spread:
                handler.wfile.flush()
                time.sleep(spread / len(pieces))
        if error is not None:  # how a server reports a failure after it has started streaming
            handler.wfile.write(f"data: {json.dumps({'error': error})}\n\n".encode())
            handler.wfile.flush()
            handler.close_connection = True
            return
        end = {
            "id": "s",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
        }
        handler.wfile.write(f"data: {json.dumps(end)}\n\n".encode())
        if usage is not None:
            last = {"id": "s", "object": "chat.completion.chunk", "created": 0, "model": model, "choices": []}
            handler.wfile.write(f"data: {json.dumps({**last, 'usage': usage})}\n\n".encode())
        handler.wfile.write(b"data: [DONE]\n\n")
        handler.wfile.flush()
        handler.close_connection = True


if __name__ == "__main__":  # python -m tests.stub_llm --port 8911
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8911)
    args = parser.parse_args()
    s = StubLLM(port=args.port).start()
    print(s.base_url, flush=True)
    s.thread.join()
