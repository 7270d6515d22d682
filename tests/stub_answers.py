"""What the test stub model answers (tests/stub_llm.py serves it over HTTP; bench/fake.py answers the same in process).

It recognises the node from the system prompt and answers deterministically:

* draft:    ``draft_words`` words seeded by the query;
* critique: "Round k: ..." -- or the stop phrase from round ``critic_stop_round`` on; or a scored JSON critique;
* revise:   the current text with ``changes(k)`` words altered, so similarity rises round by round;
* embeddings: a deterministic unit vector per text.

Also here: the stub's settings (``DEFAULTS``), the reply's usage, and real servers' context-overflow error bodies.
"""

from __future__ import annotations

import hashlib
import json
import re
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
