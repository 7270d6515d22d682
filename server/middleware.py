"""Error translation for tools and resources, and the learning middleware.

``guard`` turns a ``RedraftError`` into the MCP error a client sees: ``"<code>: <message>"`` (plus ``retryable``
when it is). Anything unexpected is logged server-side and reaches the client as a generic message: internals,
DSNs and keys never leave the process.

Logging: an expected error (any ``RedraftError``, a refused argument) is one log line with its code, no traceback;
an unexpected one keeps its traceback. The errors raised here carry ``log_level=NOTSET``, which FastMCP's own
"Error calling tool" / "Error reading resource" lines never log at, so the line written here is the only one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from fastmcp.exceptions import FastMCPError, MCPError, ResourceError, ToolError, ValidationError
from fastmcp.server.middleware import Middleware, MiddlewareContext
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS
from pydantic import ValidationError as PydanticValidationError

from redraft.errors import RedraftError, StorageError
from redraft.observability import logs, metrics
from redraft.server.sessions import principal_key

log = logging.getLogger("redraft.server")
P = ParamSpec("P")
R = TypeVar("R")

# MCP's "resource not found" (2025-06-18 and earlier); invalid params is JSON-RPC's -32602.
RESOURCE_NOT_FOUND = -32002
NOT_FOUND_CODES = {"not_found", "invalid_session", "unknown_companion", "checkpoint_not_found"}
# Codes that say the server or its environment failed (worth an operator's WARNING), not the caller's request.
SERVER_SIDE_CODES = {"storage_error", "model_error", "context_overflow", "lease_lost", "unsafe_payload"}
STORAGE_MODULES = {"psycopg", "psycopg_pool", "sqlite3", "aiosqlite"}
INTERNAL = "internal_error: the server failed unexpectedly; nothing was changed."
STORAGE = {"code": "storage_error"}
_CODE = re.compile(r"^([a-z][a-z_]{1,39}): ")


def error_text(exc: RedraftError) -> str:
    return f"{exc.code}: {exc.message}" + (" (retryable)" if exc.retryable else "")


class ResourceFailure(ResourceError, MCPError):
    """A failed resource read with an MCP error code. FastMCP passes an ``MCPError``'s code to the client unchanged
    (resources have no error-result shape); as a ``ResourceError`` it logs at ``log_level``."""

    def __init__(self, code: int, message: str) -> None:
        MCPError.__init__(self, code, message)
        self.log_level = logging.NOTSET


def _refusal(kind: type[FastMCPError], code: str | None, text: str) -> FastMCPError:
    if issubclass(kind, ResourceError):
        number = RESOURCE_NOT_FOUND if code in NOT_FOUND_CODES else INVALID_PARAMS
        return ResourceFailure(INTERNAL_ERROR if code is None or code in SERVER_SIDE_CODES else number, text)
    return kind(text, log_level=logging.NOTSET)


def _storage_failure(exc: BaseException) -> bool:
    """A database driver's exception (or one raised from it) that nothing translated into a ``StorageError``."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if type(seen).__module__.split(".", 1)[0] in STORAGE_MODULES:
            return True
        seen = seen.__cause__
    return False


def guard(kind: type[FastMCPError] = ToolError) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await fn(*args, **kwargs)
            except RedraftError as exc:
                text = error_text(exc)
                level = logging.WARNING if exc.code in SERVER_SIDE_CODES else logging.INFO
                log.log(level, "%s: %s", fn.__name__, text, extra={"code": exc.code})
                raise _refusal(kind, exc.code, text) from None
            except FastMCPError:
                raise
            except Exception as exc:
                if _storage_failure(exc):
                    # A safety net: the database layer should have raised StorageError itself.
                    metrics.storage_failed()
                    log.warning("untranslated database error in %s", fn.__name__, exc_info=True, extra=STORAGE)
                    text = error_text(StorageError(f"The database failed ({type(exc).__name__}); nothing was changed."))
                    raise _refusal(kind, StorageError.code, text) from None
                log.exception("unexpected error in %s", fn.__name__, extra={"code": "internal_error"})
                raise _refusal(kind, None, INTERNAL) from None

        return wrapper

    return decorate


def _field(loc: tuple) -> str:
    """A pydantic error location as ``a.b.0``; a client-chosen key (an unknown argument) is shown shortened."""
    parts = []
    for part in loc:
        part = str(part)
        parts.append(part if part.isidentifier() and len(part) <= 64 else ascii(part[:32]))
    return ".".join(parts) or "arguments"


def _reason(error: dict[str, Any]) -> str:
    reason = error["msg"].removeprefix("Value error, ").replace("\n", " ")
    value = error.get("input")
    if value is None or isinstance(value, (bool, int, float)):
        reason += f" (got {value!r})" if error["type"] != "missing" else ""
    return reason


def describe_invalid(exc: PydanticValidationError, most: int = 3) -> str:
    """pydantic's multi-line validation text as one line: ``invalid_input: <field>: <reason>[; ...]``."""
    errors = exc.errors(include_url=False, include_context=False)
    problems = [f"{_field(e['loc'])}: {_reason(e)}" for e in errors[:most]]
    more = f" (and {len(errors) - most} more)" if len(errors) > most else ""
    return "invalid_input: " + "; ".join(problems) + more


class _QuietArgumentWarnings(logging.Filter):
    """Drops FastMCP's own line for refused arguments: ``ArgumentErrors`` logs the one line, with its code."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Invalid arguments for tool")


class ArgumentErrors(Middleware):
    """A tool call whose arguments fail validation (wrong type, out of range, unknown argument, a refused text)
    gets ``invalid_input: <field>: <reason>`` on one line instead of pydantic's multi-line text. FastMCP validated
    before the tool body ran, so nothing changed."""

    def __init__(self) -> None:
        fastmcp_log = logging.getLogger("fastmcp.server.server")
        if not any(isinstance(f, _QuietArgumentWarnings) for f in fastmcp_log.filters):
            fastmcp_log.addFilter(_QuietArgumentWarnings())

    async def on_call_tool(self, context: MiddlewareContext, call_next):
        try:
            return await call_next(context)
        except ValidationError as exc:
            cause = exc.__cause__
            if isinstance(cause, PydanticValidationError):
                text = describe_invalid(cause)
            else:
                text = "invalid_input: the arguments do not match the tool's input schema"
            log.info("%s: %s", context.message.name, text, extra={"code": "invalid_input"})
            raise ToolError(text, log_level=logging.NOTSET) from None


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
            full_run = name == "refine" and (context.message.arguments or {}).get("query") is not None
            await self.app.stats.record_call(companion, name, data, elapsed, full_run)
        except Exception:
            log.warning("could not record stats for %s", name, exc_info=True)
        return result


def outcome_code(exc: BaseException) -> str:
    """The error code a failed call answered with (``"<code>: ..."``, as ``guard`` words it), else ``error``."""
    if isinstance(exc, RedraftError):
        return exc.code
    match = _CODE.match(str(exc))
    return match.group(1) if match and match.group(1) in _known_codes() else "error"


@functools.cache
def _known_codes() -> frozenset[str]:
    """Every error code a tool can answer with: a bounded label set (a message's first word never becomes one)."""
    codes, todo = {"invalid_input", "internal_error"}, [RedraftError]
    while todo:
        kind = todo.pop()
        codes.add(kind.code)
        todo.extend(kind.__subclasses__())
    return frozenset(codes)


class ObservabilityMiddleware(Middleware):
    """Outermost: each tool call is counted by tool and outcome code with its latency (``redraft_tool_calls_total``,
    ``redraft_tool_call_duration_seconds``), logged once with its duration, and everything logged while it runs
    carries its tool and session (JSON logs). FastMCP opens the call's trace span itself."""

    async def on_call_tool(self, context: MiddlewareContext, call_next):
        name = context.message.name
        session = (context.message.arguments or {}).get("session_id")
        session = session if isinstance(session, str) and len(session) <= 64 else None
        started = time.perf_counter()
        code = "ok"
        try:
            with logs.bind(tool=name, session=session):
                result = await call_next(context)
            if getattr(result, "is_error", False):
                code = "error"
            return result
        except BaseException as exc:
            code = "cancelled" if isinstance(exc, asyncio.CancelledError) else outcome_code(exc)
            raise
        finally:
            elapsed = time.perf_counter() - started
            metrics.tool_called(name, code, elapsed)
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "tool %s answered %s in %.3f s",
                    metrics.tool_label(name),
                    code,
                    elapsed,
                    extra={
                        "code": None if code == "ok" else code,
                        "duration": round(elapsed, 6),
                        "tool": name,
                        "session": session,
                    },
                )
