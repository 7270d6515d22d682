"""MCP prompts: one per companion, so clients that offer prompts (Claude Desktop, the Inspector) show redraft's
workflows ready-made. A prompt renders the instructions an assistant follows with redraft's own tools: open a session
(or reuse one), ``refine`` with the companion, then report the best version, why the loop stopped, and what else it
can do (``diff``, ``history``, ``fork``; in step mode, ``resume`` at each gate).

The companion's defaults (operator overrides included) are read when the prompt is rendered, never cached."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastmcp import FastMCP
from fastmcp.exceptions import MCPError, PromptError
from fastmcp.prompts.base import PromptResult
from fastmcp.prompts.function_prompt import FunctionPrompt
from mcp_types import INVALID_PARAMS
from pydantic import Field

from redraft.errors import InvalidInputError
from redraft.graph.companions import get_companion

# prompt name -> (companion, what the user's text is, the request it turns into)
PROMPTS: dict[str, tuple[str, str, str]] = {
    "refine_text": ("generic", "the question or task", "Answer this, and improve the answer until it holds up"),
    "review_code": ("code", "the code to write or the change to make", "Write this code and have it reviewed"),
    "polish_essay": ("essay", "the essay's subject or the draft to improve", "Write this essay and polish it"),
    "summarize_text": ("summary", "the text to summarise", "Summarise this faithfully"),
}
MAX_TEXT_CHARS = 100_000

Loops = Annotated[
    str | None, Field(description="Optional: the most critique/revise rounds (1-50); the companion's default if unset.")
]
Session = Annotated[
    str | None, Field(description="Optional: an existing redraft session id to add this query to (else a new one).")
]


def render(name: str, text: str, max_loops: str | None, session_id: str | None, overrides: dict | None) -> str:
    """The prompt ``name`` for ``text``: the instructions an assistant follows with redraft's tools."""
    companion_name, _, request = PROMPTS[name]
    companion = get_companion(companion_name, overrides)
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError("text must not be empty.")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidInputError(f"text is {len(text)} characters; at most {MAX_TEXT_CHARS}.")
    loops = _loops(max_loops) or companion.max_loops
    session = (session_id or "").strip()
    open_session = (
        f'Use the redraft session "{session}".' if session else "Call `create_session` and keep its `session_id`."
    )
    arguments = f'session_id, companion="{companion.name}", query=<the text below>, max_loops={loops}'
    steps = [
        open_session,
        f"Call `refine` with {arguments}. It drafts, critiques and revises until the critic is satisfied, consecutive "
        f"versions converge (similarity >= {companion.similarity_threshold}), or {loops} rounds are done. A long "
        "run may be started as a background task (or with `start_refine`, then `wait_run`).",
    ]
    if companion.mode == "step":
        steps.append(
            "This companion pauses before every critique and revision (`phase` and `pending_gate` say which): show "
            "the user what the model is about to work on, ask them to approve, replace or edit it, and pass their "
            "decision to `resume`. Repeat until `phase` is `done`."
        )
    steps.append(
        "Report `final_text` (the best version), then in one line why the loop stopped (`stop_reason`) and how many "
        "rounds it took. Offer `diff` between versions, `history`, or `fork` from an earlier checkpoint if the user "
        "wants another direction."
    )
    numbered = "\n".join(f"{i}. {step}" for i, step in enumerate(steps, 1))
    return (
        f"{request}, with redraft's {companion.name} companion ({companion.description})\n\n"
        f"{numbered}\n\nThe text:\n\n{text}"
    )


def _loops(value: str | None) -> int | None:
    if value is None or not str(value).strip():
        return None
    try:
        loops = int(str(value).strip())
    except ValueError:
        raise InvalidInputError(f"max_loops must be a whole number from 1 to 50, not {value!r}.") from None
    if not 1 <= loops <= 50:
        raise InvalidInputError(f"max_loops must be from 1 to 50, not {loops}.")
    return loops


class PromptRefused(PromptError, MCPError):
    """Bad prompt arguments: the client gets invalid params with the reason; one log line, no traceback (FastMCP
    logs a ``FastMCPError`` at its ``log_level``)."""

    def __init__(self, message: str) -> None:
        MCPError.__init__(self, INVALID_PARAMS, f"invalid_input: {message}")
        self.log_level = logging.NOTSET


class CompanionPrompt(FunctionPrompt):
    """A prompt whose argument errors are the caller's (invalid params, said plainly), not the server's."""

    async def render(self, arguments: dict[str, Any] | None = None) -> PromptResult:
        missing = sorted({a.name for a in self.arguments or () if a.required} - set(arguments or {}))
        if missing:
            raise PromptRefused(f"missing argument {', '.join(missing)} for prompt {self.name}.")
        return await super().render(arguments)  # the prompt function itself turns bad values into PromptRefused


def register_prompts(mcp: FastMCP, state) -> None:
    """One MCP prompt per companion (``PROMPTS``)."""
    for name, (companion, what, request) in PROMPTS.items():
        mcp.add_prompt(_prompt(state, name, companion, what, request))


def _prompt(state, name: str, companion: str, what: str, request: str) -> CompanionPrompt:
    async def prompt(text: str, max_loops: str | None = None, session_id: str | None = None) -> str:
        try:
            return render(name, text, max_loops, session_id, state.settings.companions)
        except InvalidInputError as exc:
            raise PromptRefused(exc.message) from None

    prompt.__name__ = name
    prompt.__annotations__ = {
        "text": Annotated[str, Field(description=what[0].upper() + what[1:] + ".")],
        "max_loops": Loops,
        "session_id": Session,
        "return": str,
    }
    return CompanionPrompt.from_function(
        prompt,
        name=name,
        title=f"{request} ({companion})",
        description=f"{request}: redraft's {companion} companion drafts, critiques and revises {what}.",
    )
