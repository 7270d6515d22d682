"""A local OpenAI-compatible chat-completions server for tests and benchmarks (stdlib only, runs in a thread).

It recognises the node from the system prompt and answers deterministically:

* draft:    ``draft_words`` words seeded by the query;
* critique: "Round k: ..." -- or the stop phrase from round ``critic_stop_round`` on;
* revise:   the current text with ``changes(k)`` words altered, so similarity rises round by round.

Faults (429 with Retry-After, 500, timeouts, malformed JSON, empty content, context overflow with a real server's
error body, replies cut at max_tokens) are queued with ``fail`` and consumed by the next matching requests. Every
request is recorded (``requests``, with its sampling parameters), so tests can assert on real prompts. Other
processes configure it over HTTP: ``POST /_control`` and ``GET /_requests``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VOCAB = (
    "alpha beta gamma delta system graph state model text review answer clear precise robust simple data value "
    "query critic revise draft version stable change detail reason example result method field process thread"
).split()


def node_of(messages: list[dict]) -> str:
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    if "revising" in system:
        return "revise"
    if "critic" in system:
        return "critique"
    return "draft"


def words_for(seed: str, n: int) -> list[str]:
    out = []
    h = hashlib.sha256(seed.encode()).digest()
    while len(out) < n:
        h = hashlib.sha256(h).digest()
        out.extend(VOCAB[b % len(VOCAB)] for b in h)
    return out[:n]


def answer(cfg: dict[str, Any], node: str, messages: list[dict]) -> str:
    """The deterministic reply for a node's prompt (shared with the in-process fake model of bench/)."""
    user = messages[-1]["content"]
    if node == "draft":
        return " ".join(words_for(user, cfg["draft_words"])).capitalize() + "."
    if node == "critique":
        match = re.search(r"Review round (\d+)", user)
        rnd = int(match.group(1)) if match else 1
        stop = cfg["critic_stop_round"]
        if cfg.get("critic_format", "prose") != "prose":
            return scored_critique(cfg, rnd, stop is not None and rnd >= stop, user)
        if stop is not None and rnd >= stop:
            return cfg.get("critic_stop_text", "NO FURTHER CHANGES")
        return f"Round {rnd}: " + " ".join(words_for(f"critique{rnd}{user[:64]}", cfg["critique_words"])) + "."
    # revise: alter changes(k) words of the current text
    text = user.split("Current text:\n", 1)[1].split("\n\nCritique:\n", 1)[0]
    critique = user.split("\n\nCritique:\n", 1)[1]
    match = re.search(r"Round (\d+)", critique)
    k = int(match.group(1)) if match else 1
    schedule = cfg["changes"]
    n = schedule[min(k, len(schedule)) - 1]
    words = text.split()
    for j in range(n):
        pos = (j * 7919 + k * 104729) % len(words)
        options = [w for w in VOCAB if w != words[pos] and len(w) == len(words[pos])] or VOCAB
        words[pos] = options[(j + k) % len(options)]  # same length: the text neither grows nor shrinks
    return " ".join(words)


def scored_critique(cfg: dict[str, Any], rnd: int, done: bool, user: str) -> str:
    """A structured critique ({score, issues: [{where, problem, fix}], done}) as ``critic_format`` says: "json" (the
    bare object), "fenced" (in a ```json block after a sentence of prose, with a trailing comma) or "malformed" (an
    object cut short). Round k scores ``critic_scores[k-1]`` (the last value repeats); the issue names "Round k"."""
    scores = cfg.get("critic_scores") or [5]
    score = scores[min(rnd, len(scores)) - 1]
    words = " ".join(words_for(f"critique{rnd}{user[:64]}", cfg["critique_words"]))
    issues = [] if done else [{"where": f"Round {rnd}", "problem": words, "fix": "change it"}]
    body = json.dumps({"score": score, "issues": issues, "done": done})
    fmt = cfg.get("critic_format")
    if fmt == "fenced":
        return f"Here is my review.\n```json\n{body[:-1]},}}\n```\nThanks."
    if fmt == "malformed":
        return f"Round {rnd}: " + body[: len(body) // 2]
    return body


def embedding(text: str, dims: int = 64) -> list[float]:
    """A deterministic bag-of-words vector (hashed words, unit length): texts sharing words are close."""
    vector = [0.0] * dims
    for word in re.findall(r"\w+", text.lower()):
        h = hashlib.sha256(word.encode()).digest()
        vector[h[0] % dims] += 1.0 if h[1] % 2 else -1.0
    norm = sum(x * x for x in vector) ** 0.5 or 1.0
    return [x / norm for x in vector]


# What real servers answer (HTTP 400) when the prompt does not fit their context window, verbatim in shape.
OVERFLOW_BODIES: dict[str, dict] = {
    "llama.cpp": {
        "error": {
            "code": 400,
            "message": "the request exceeds the available context size, try increasing it",
            "type": "exceed_context_size_error",
            "n_prompt_tokens": 2301,
            "n_ctx": 2048,
        }
    },
    "openai": {
        "error": {
            "message": "This model's maximum context length is 128000 tokens. However, your messages resulted in "
            "131072 tokens. Please reduce the length of the messages.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    },
    "llama-cpp-python": {  # as SmolLM2-135M on llama-cpp-python 0.3.36 (n_ctx 2048) answered a 2,500-word query
        "error": {
            "message": "This model's maximum context length is 2048 tokens. However, you requested 2531 tokens (2531 "
            "in the messages, None in the completion). Please reduce the length of the messages or completion.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    },
    "vllm": {  # not wrapped in "error"
        "object": "error",
        "message": "This model's maximum context length is 2048 tokens. However, you requested 2612 tokens (2356 in "
        "the messages, 256 in the completion). Please reduce the length of the messages or completion.",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    },
}


def overflow_body(kind: Any) -> dict:
    """A named server's body (True: llama.cpp's), or a dict used as the body itself."""
    return kind if isinstance(kind, dict) else OVERFLOW_BODIES["llama.cpp" if kind is True else kind]


DEFAULTS: dict[str, Any] = {
    "draft_words": 300,
    "critic_stop_round": None,  # round at which the critic answers NO FURTHER CHANGES
    "critic_stop_text": "NO FURTHER CHANGES",  # what it answers from that round on
    "changes": [12, 8, 4, 0],  # words changed at revision 1, 2, 3, ...; the last value repeats
    "latency_ms": 0,
    # a streamed reply's chunks spread over this many ms (after latency_ms), as a model generating them does
    "stream_ms": 0,
    "critique_words": 40,
    # True: behave like llama.cpp, reading only the classic `max_tokens` field (never `max_completion_tokens`) and
    # cutting a longer reply at that many words, finish_reason "length"
    "honour_max_tokens": False,
    # the critic's answer: "prose" (above), or a scored JSON critique: "json", "fenced" or "malformed" (see
    # scored_critique), scoring round k critic_scores[k-1]
    "critic_format": "prose",
    "critic_scores": [5],
    # True: answer a request carrying a response_format with HTTP 400, as servers without JSON mode do; or a dict
    # {type: status} refusing only those response_format types, e.g. {"json_schema": 500} as llama-cpp-python's
    # server does (a validation error as HTTP 500; it takes "json_object")
    "reject_response_format": False,
    # False: no /v1/embeddings route (404), as a chat-only server
    "embeddings": True,
    # the reply's token counts: a fixed {"prompt_tokens", "completion_tokens"}, "words" (words of the prompt's
    # messages and of the reply), or None for an endpoint that reports no usage. Streamed replies carry it in a last
    # chunk only when the request asks (stream_options.include_usage), as OpenAI does.
    "usage": {"prompt_tokens": 1, "completion_tokens": 1},
}


def usage_for(cfg: dict[str, Any], messages: list[dict], content: str) -> dict | None:
    spec = cfg.get("usage")
    if spec is None:
        return None
    if spec == "words":
        prompt = sum(len(str(m.get("content") or "").split()) for m in messages)
        spec = {"prompt_tokens": prompt, "completion_tokens": len(content.split())}
    return {**spec, "total_tokens": spec["prompt_tokens"] + spec["completion_tokens"]}


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
