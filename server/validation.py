"""The one validated text type for every free-text argument at the MCP edge.

Queries, critiques, revisions, step-mode decisions, checkpoint ids, ``before`` cursors, companion and model names
all go through :func:`text`: a size limit (from the settings for texts), and no blank value, NUL character or lone
surrogate. pydantic checks it while FastMCP validates a call's arguments, before the tool body runs, so a refused
value changes nothing; ``ArgumentErrors`` in ``middleware.py`` turns the refusal into one line,
``invalid_input: <field>: <reason>``. The runner keeps its own checks as defence in depth.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field

# Checkpoint ids are LangGraph's uuid6 strings (36 characters); companion names are short identifiers.
ID_CHARS = 64
NAME_CHARS = 200


def _check(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode (it contains a lone surrogate)") from None
    return value


def text(max_chars: int, description: str | None = None, *, optional: bool = False) -> Any:
    """The validated text type, at most ``max_chars`` characters; ``optional`` also accepts null (omitted)."""
    checked = Annotated[str, Field(max_length=max_chars), AfterValidator(_check)]
    return Annotated[checked | None if optional else checked, Field(description=description)]
