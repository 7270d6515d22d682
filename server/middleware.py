"""Error translation for tools and resources, and the learning middleware.

``guard`` turns a ``RedraftError`` into the MCP error a client sees: ``"<code>: <message>"`` (plus ``retryable``
when it is). Anything unexpected is logged server-side and reaches the client as a generic message: internals,
DSNs and keys never leave the process.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from fastmcp.exceptions import FastMCPError, ToolError
from fastmcp.server.middleware import Middleware, MiddlewareContext

from redraft.errors import RedraftError
from redraft.server.sessions import principal_key

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


class SessionActivityMiddleware(Middleware):
    """Stamps ``last_accessed`` again when a long call on a session finishes (every call stamps it when it starts),
    so TTLs count idle time, not call time."""

    def __init__(self, app) -> None:
        self.app = app

    async def on_call_tool(self, context: MiddlewareContext, call_next):
        started = time.monotonic()
        result = await call_next(context)
        session_id = (context.message.arguments or {}).get("session_id")
        long_call = time.monotonic() - started > min(5.0, self.app.settings.session_ttl_seconds / 10)
        if long_call and session_id is not None and context.message.name != "end_session" and self.app.sessions:
            try:
                await self.app.sessions.touch_quietly(principal_key(), session_id)
            except Exception:
                log.warning("could not record session activity", exc_info=True)
        return result


# Tools that advance a thread, and what a successful call means for the learning stats.
ADVANCING = {"draft", "critique", "revise", "refine", "resume", "fork", "replay"}


class LearningMiddleware(Middleware):
    """Records, per companion type, how each advancing tool call moved its thread (phase transition and time) and,
    when a call finishes a query, the run's iterations, final similarity, stop reason and duration. Everything goes
    to the database through ``stats``; nothing is kept in the process."""

    def __init__(self, app) -> None:
        self.app = app

    async def on_call_tool(self, context: MiddlewareContext, call_next):
        name = context.message.name
        started = time.monotonic()
        result = await call_next(context)
        if name not in ADVANCING or self.app.stats is None:
            return result
        data = getattr(result, "structured_content", None) or {}
        companion = data.get("companion")
        if not companion or data.get("phase") is None:
            return result
        elapsed = time.monotonic() - started
        try:
            await self.app.stats.record(companion, "transition", duration_s=elapsed, detail=f"{name}->{data['phase']}")
            if data["phase"] == "done" and data.get("stop_reason"):
                full_run = name == "refine" and (context.message.arguments or {}).get("query") is not None
                await self.app.stats.record(
                    companion,
                    "run",
                    iterations=len((data.get("slot") or {}).get("revision") or []),
                    final_similarity=(data.get("similarities") or [None])[-1],
                    stop_reason=data["stop_reason"],
                    duration_s=elapsed if full_run else None,
                )
        except Exception:
            log.warning("could not record stats for %s", name, exc_info=True)
        return result
