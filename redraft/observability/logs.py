"""Log lines: text for humans (the default), or one JSON object per line with ``REDRAFT_LOG_FORMAT=json``.

Every line goes to stderr (over stdio, stdout speaks MCP). A JSON line always has the same keys::

    {"time": "2026-11-25T22:05:28.123Z", "level": "info", "logger": "redraft.server", "event": "...",
     "code": null, "session": "...", "run": null, "node": null, "duration": 0.0123, ...}

``code`` is the error code (``wrong_phase``, ``storage_error``, ...) when the line is about one, ``duration`` is in
seconds; ``session``, ``run``, ``node`` (and ``tool``) come from the context the line was logged in (``bind``): the
tool call, background run or graph step being served. Extra fields passed with ``extra=`` are kept. Secrets never
appear: server/redaction.py masks every configured secret when the record is created, before any formatter runs.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

FIELDS = ("code", "session", "run", "node", "duration")
CONTEXT_KEYS = ("session", "run", "node", "tool")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("redraft_log_context", default=None)
# LogRecord's own attributes: anything else on a record came from ``extra=`` and is kept in the JSON line.
# (uvicorn's ``color_message`` repeats the message with terminal colour codes.)
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "color_message"}


@contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add ``fields`` (session, run, node, tool) to every line logged inside the block, in this task and the tasks
    it starts."""
    token = push(fields)
    try:
        yield
    finally:
        _context.reset(token)


def push(fields: dict[str, Any]) -> contextvars.Token:
    """``bind`` without the context manager, for hot paths: undo with ``pop(token)`` in the same context."""
    current = _context.get()
    return _context.set({**current, **fields} if current else fields)


def pop(token: contextvars.Token) -> None:
    _context.reset(token)


def bound(key: str) -> Any:
    current = _context.get()
    return current.get(key) if current else None


def snapshot() -> dict[str, Any] | None:
    return _context.get()


class JsonFormatter(logging.Formatter):
    """One JSON object per line; the message (already redacted) is ``event``."""

    def format(self, record: logging.LogRecord) -> str:
        context = _context.get() or {}
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key in FIELDS:
            line[key] = getattr(record, key, None)
            if line[key] is None:
                line[key] = context.get(key)
        if "tool" in context:
            line["tool"] = context["tool"]
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in line:
                line[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, ensure_ascii=False, default=str)


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(level: str, log_format: str = "text", stream: TextIO | None = None) -> None:
    """The process's logging for ``redraft serve``: one stderr handler on the root logger, text or JSON. In JSON mode
    FastMCP's own (Rich) handlers are removed so its lines go through the same JSON handler, and uvicorn is served
    without a logging config of its own (server/http.py)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if log_format == "json":
        import fastmcp

        fastmcp.settings.log_enabled = False  # FastMCP must not put its Rich handlers back (temporary_log_level)
        fastmcp_log = logging.getLogger("fastmcp")
        for old in fastmcp_log.handlers[:]:
            fastmcp_log.removeHandler(old)
        fastmcp_log.propagate = True
        fastmcp_log.setLevel(level)
