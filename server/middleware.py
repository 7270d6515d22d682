"""Error translation for tools and resources, and the FastMCP middleware stack.

``guard`` turns a ``RedraftError`` into the MCP error a client sees: ``"<code>: <message>"`` (plus ``retryable``
when it is). Anything unexpected is logged server-side and reaches the client as a generic message: internals,
DSNs and keys never leave the process.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from fastmcp.exceptions import FastMCPError, ToolError

from redraft.errors import RedraftError

log = logging.getLogger("redraft.server")
P = ParamSpec("P")
R = TypeVar("R")


def error_text(exc: RedraftError) -> str:
    return f"{exc.code}: {exc.message}" + (" (retryable)" if exc.retryable else "")


def guard(kind: type[FastMCPError] = ToolError) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await fn(*args, **kwargs)
            except RedraftError as exc:
                raise kind(error_text(exc)) from None
            except FastMCPError:
                raise
            except Exception:
                log.exception("unexpected error in %s", fn.__name__)
                raise kind("internal_error: the server failed unexpectedly; nothing was changed.") from None

        return wrapper

    return decorate
