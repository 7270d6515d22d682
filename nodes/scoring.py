"""Scored, structured critiques: the critic answers ``{score: 0-10, issues: [{where, problem, fix}], done}``.

The critic is asked through a JSON-schema ``response_format`` where the endpoint takes one (REDRAFT_CRITIQUE_RESPONSE
_FORMAT; "auto" asks again without it, once per endpoint and model, when the endpoint refuses it), and its reply is
parsed tolerantly either way: JSON in prose or code fences, trailing commas, Python literals, single quotes, numeric
strings. A reply that holds no such object is kept as a prose critique (today's stop rule applies to it) and the
fallback is noted in its ``scores`` entry and logged; nothing here raises on a bad reply.

The run_log critique stays text: the structure is rendered (``render``). The score goes into the ``scores`` log as
``{"slot", "iteration": version critiqued, "score", "critique": n, "issues", "done", "requested"}`` (critique #n
scores version n-1), beside the revise node's similarity entries, which ``scores_for`` keeps returning alone.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import BaseMessage

from redraft.errors import ContextOverflowError, ModelError, TruncatedReplyError
from redraft.graph.convergence import NO_FURTHER_CHANGES, critic_is_satisfied
from redraft.nodes.model import Reply
from redraft.nodes.roles import endpoint_of, for_role

log = logging.getLogger("redraft.scoring")

ISSUE_SCHEMA = {
    "type": "object",
    "properties": {"where": {"type": "string"}, "problem": {"type": "string"}, "fix": {"type": "string"}},
    "required": ["where", "problem", "fix"],
    "additionalProperties": False,
}
CRITIQUE_SCHEMA = {
    "type": "object",
    "properties": {
        "score": {"type": "integer", "minimum": 0, "maximum": 10},
        "issues": {"type": "array", "items": ISSUE_SCHEMA},
        "done": {"type": "boolean"},
    },
    "required": ["score", "issues", "done"],
    "additionalProperties": False,
}
RESPONSE_FORMATS: dict[str, dict] = {
    "json_schema": {
        "type": "json_schema",
        "json_schema": {"name": "critique", "strict": True, "schema": CRITIQUE_SCHEMA},
    },
    "json_object": {"type": "json_object"},
}
MAX_SCORE = 10.0
MAX_STARTS = 32  # a reply's first this many "{" are tried as the start of the critique object
MAX_ISSUES = 50

_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")
_SMART_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})
_PY_LITERALS = {"true": "True", "false": "False", "null": "None"}
_NUMBER = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*10(?:\.0+)?)?\s*$")
# Endpoints (base URL, model) that refused a response_format in "auto" mode: asked with the prompt alone from then on
# (the tolerant parser still reads a JSON critique written as prose). Not json_object: the one server known to refuse
# json_schema, llama-cpp-python, takes json_object through a grammar that sampled ~3 tokens/s on this machine against
# ~50 without (SmolLM2-135M), so every critique ran into the request timeout. json_object stays available pinned.
# A capability memo per process, not state: a fresh process finds out again with one refused request.
_REFUSED: set[tuple[str | None, str]] = set()


@dataclass(frozen=True)
class Critique:
    """A critique as the loop uses it. ``text`` is what the run_log stores (the rendered structure, or the raw reply
    when it held none). ``note`` says why a reply requested as structured was kept as prose."""

    text: str
    score: float | None = None
    issues: tuple[dict[str, str], ...] = ()
    done: bool = False
    structured: bool = False
    note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def satisfied(self) -> bool:
        """Structured: ``done`` and no issues. Prose: the whole critique is a stop phrase (graph/convergence.py)."""
        if self.structured:
            return self.done and not self.issues
        return critic_is_satisfied(self.text)


def prose(text: str, note: str | None = None) -> Critique:
    return Critique(text=text, note=note)


def parse(raw: str) -> Critique:
    """The critique in a model's reply, read tolerantly; the raw text as a prose critique (with ``note``) if none."""
    try:
        found = find_object(raw)
        if found is None:
            reason = "no JSON object in the reply" if "{" not in raw else "no critique object could be parsed"
            return prose(raw, reason)
        score, note = _score(found.get("score"))
        issues = _issues(found.get("issues"))
        done = _flag(found.get("done"))
    except Exception as exc:  # a reply is data: whatever it holds, the step goes on with it as prose
        return prose(raw, f"unreadable critique ({type(exc).__name__})")
    critique = Critique(text="", score=score, issues=issues, done=done, structured=True, note=note)
    return Critique(**{**critique.__dict__, "text": render(critique)})


def find_object(raw: str) -> dict | None:
    """The first JSON-ish object in ``raw`` (fenced blocks first) with a ``score``, ``issues`` or ``done`` key (keys
    matched case-insensitively; one wrapping object such as ``{"critique": {...}}`` is looked into)."""
    texts = [m.group(1) for m in _FENCE.finditer(raw)] + [raw]
    for text in texts:
        text = text.translate(_SMART_QUOTES)
        starts = [i for i, ch in enumerate(text) if ch == "{"][:MAX_STARTS]
        for start in starts:
            obj = _load(text, start)
            if obj is None:
                continue
            obj = {str(k).strip().lower(): v for k, v in obj.items()}
            if {"score", "issues", "done"} & obj.keys():
                return obj
            inner = [v for v in obj.values() if isinstance(v, dict)]
            if len(inner) == 1:
                nested = {str(k).strip().lower(): v for k, v in inner[0].items()}
                if {"score", "issues", "done"} & nested.keys():
                    return nested
    return None


def _load(text: str, start: int) -> dict | None:
    decoder = json.JSONDecoder(strict=False)
    try:
        obj, _ = decoder.raw_decode(text, start)
        return obj if isinstance(obj, dict) else None
    except (ValueError, RecursionError):
        pass
    end = _balanced_end(text, start)
    if end is None:
        return None
    chunk = _TRAILING_COMMA.sub(r"\1", text[start:end])
    try:
        obj = json.loads(chunk, strict=False)
        return obj if isinstance(obj, dict) else None
    except (ValueError, RecursionError):
        pass
    try:  # single quotes, Python's True/False/None, or JSON's true/false/null among them
        obj = ast.literal_eval(re.sub(r"\b(true|false|null)\b", lambda m: _PY_LITERALS[m.group(1)], chunk))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _balanced_end(text: str, start: int) -> int | None:
    """The index just past the ``}`` closing the ``{`` at ``start`` (quotes of either kind respected), or None."""
    depth, quote, escaped = 0, "", False
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _score(value: Any) -> tuple[float | None, str | None]:
    if value is None:
        return None, "no score given"
    if isinstance(value, str):
        match = _NUMBER.match(value)
        value = float(match.group(1)) if match else value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None, f"score {str(value)[:40]!r} is not a number"
    if not 0 <= value <= MAX_SCORE:
        return None, f"score {value} is outside 0-10"
    return float(value), None


def _text(value: Any) -> str:
    if value is None:
        return ""
    return " ".join((value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)).split())


def _issues(value: Any) -> tuple[dict[str, str], ...]:
    if value is None or value == "":
        return ()
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items[:MAX_ISSUES]:
        if isinstance(item, dict):
            keys = {str(k).strip().lower(): v for k, v in item.items()}
            issue = {
                "where": _text(keys.get("where", keys.get("location"))),
                "problem": _text(keys.get("problem", keys.get("issue", keys.get("description")))),
                "fix": _text(keys.get("fix", keys.get("suggestion"))),
            }
        else:
            issue = {"where": "", "problem": _text(item), "fix": ""}
        if any(issue.values()):
            out.append(issue)
    return tuple(out)


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "1")
    return value is True or value == 1


def _number(score: float) -> str:
    return str(int(score)) if score == int(score) else f"{score:g}"


def render(critique: Critique) -> str:
    """The structure as the readable text the run_log keeps and the reviser reads."""
    head = f"Score: {_number(critique.score)}/10" if critique.score is not None else "Score: not given"
    lines = [head]
    for i, issue in enumerate(critique.issues, 1):
        line = f"{i}. {issue['where']}: {issue['problem']}" if issue["where"] else f"{i}. {issue['problem']}"
        if issue["fix"]:
            line += f" Fix: {issue['fix']}"
        lines.append(line)
    if not critique.issues:
        lines.append(
            NO_FURTHER_CHANGES if critique.done else "No specific issue named; the critic does not consider it done."
        )
    return "\n".join(lines)


def score_entry(slot: int, n: int, critique: Critique, requested: str) -> dict:
    """The ``scores`` log entry for critique #n (of version n-1)."""
    entry: dict[str, Any] = {
        "slot": slot,
        "iteration": n - 1,
        "score": critique.score,
        "critique": n,
        "issues": len(critique.issues),
        "done": critique.done,
        "requested": requested,
    }
    if critique.note is not None:
        entry["fallback" if not critique.structured else "note"] = critique.note
    return entry


def critique_format(ctx, companion) -> str:
    """structured or text: the companion's own setting, else REDRAFT_CRITIQUE_FORMAT."""
    return getattr(companion, "critique_format", None) or ctx.settings.critique_format


# A refused response_format: a plain 400/415/422, or any other status whose error names the field (llama-cpp-python
# answers an unsupported json_schema with HTTP 500 and a validation error about body.response_format)
_REFUSAL = re.compile(r"\bHTTP (400|415|422)\b")
_NAMES_FIELD = re.compile(r"\bHTTP \d{3}\b.*(response_format|json_schema|json_object)", re.DOTALL)


def _refused(message: str) -> bool:
    return bool(_REFUSAL.search(message) or _NAMES_FIELD.search(message))


# A JSON-mode critique with no max_tokens of its own is capped: under a JSON grammar a weak model can pad its object
# with whitespace until the context is full (SmolLM2-135M on llama.cpp ran into the 60 s request timeout, three times).
# A critique cut even after the truncation policy's retry is asked for once more as prose, without the format.
JSON_CRITIQUE_MAX_TOKENS = 1024


def _capped(sampling: dict[str, Any]) -> dict[str, Any]:
    if for_role(sampling, "critique").get("max_tokens"):
        return sampling
    roles = sampling.get("roles") or {}
    if "critic" in roles:
        return {**sampling, "roles": {**roles, "critic": {**roles["critic"], "max_tokens": JSON_CRITIQUE_MAX_TOKENS}}}
    return {**sampling, "max_tokens": JSON_CRITIQUE_MAX_TOKENS}


async def ask_critic(ctx, sampling: dict[str, Any], messages: list[BaseMessage], hint: str) -> tuple[Reply, str]:
    """The critic's reply and how it was requested: "json_schema", "json_object" or "none" (the prompt alone)."""
    setting = ctx.settings.critique_response_format
    role = for_role(sampling, "critique")
    key = (endpoint_of(ctx.settings, role).base_url, str(role.get("model")))
    requested = setting
    if setting == "auto":
        requested = "none" if key in _REFUSED else "json_schema"
    if requested != "none":
        # in the request body as is, not through langchain's response_format argument: that takes the openai client's
        # parse API, which re-parses the partial JSON at every streamed chunk (seconds per reply) and raises on a
        # reply cut at max_tokens instead of returning it to the truncation policy
        bind = {"extra_body": {"response_format": RESPONSE_FORMATS[requested]}}
        try:
            reply = await ctx.models.complete(_capped(sampling), messages, "critique", overflow_hint=hint, bind=bind)
            return reply, requested
        except ContextOverflowError:
            raise
        except TruncatedReplyError:
            if role.get("max_tokens") is not None:  # the caller's own limit: its truncation policy stands
                raise
            log.warning(
                "A %s critique ran past %d tokens; asking for this one as prose.", requested, JSON_CRITIQUE_MAX_TOKENS
            )
        except ModelError as exc:
            if setting != "auto" or not _refused(exc.message):
                raise
            _REFUSED.add(key)
            log.warning(
                "The critic endpoint refused response_format %s (%s); asking with the prompt alone from now on for "
                "model %s.",
                requested,
                exc.message,
                key[1],
            )
    return await ctx.models.complete(sampling, messages, "critique", overflow_hint=hint), "none"


_WARNED: set[str] = set()


def log_fallback(sampling: dict[str, Any], slot: int, n: int, note: str | None) -> None:
    """Log a critique kept as prose: a warning the first time per critic model (a model that cannot write the JSON
    would otherwise warn at every critique), then at debug level; its scores entry records each one."""
    model = str(for_role(sampling, "critique").get("model"))
    first = model not in _WARNED and len(_WARNED) < 1000
    if first:
        _WARNED.add(model)
    log.log(
        logging.WARNING if first else logging.DEBUG,
        "Critique %d of slot %d kept as prose: %s (model %s%s).",
        n,
        slot,
        note,
        model,
        "; logged once per model, each critique's scores entry records its fallback" if first else "",
    )


def reset_refusals() -> None:
    """Forget which endpoints refused a response_format, and which models were warned about (tests)."""
    _REFUSED.clear()
    _WARNED.clear()
