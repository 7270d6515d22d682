"""The viewer's actions are MCP tool calls made in process (``FastMCP.call_tool``): ``fork``, ``resume`` (with or
without a gate decision) and ``cancel_run`` run exactly the code an MCP client reaches, with its argument checks,
errors, principal scoping, logging and metrics. Nothing is reimplemented here.

A call that takes longer than ``QUICK_S`` (a resume runs model steps) goes on in the background: the page answers at
once and shows the action as running; live updates show its steps, and its outcome when it ends. The last action per
(principal, thread) is kept in this process only, for display; the thread itself is in the database as always.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any

log = logging.getLogger("redraft.viewer")

QUICK_S = 2.0  # an action that ends within this answers with its outcome; a longer one goes on in the background
MAX_TRACKED = 1000


def _message(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if ":" in text[:40] else f"error: {text}"


class Actions:
    """The last action per (principal, thread), and the background tasks of those still running."""

    def __init__(self, mcp) -> None:
        self.mcp = mcp
        self.last: OrderedDict[tuple[str, str], dict] = OrderedDict()
        self.tasks: set[asyncio.Task] = set()

    def state(self, principal: str, thread: str) -> dict | None:
        return self.last.get((principal, thread))

    def stamp(self, principal: str, thread: str) -> str:
        entry = self.last.get((principal, thread))
        return f"{entry['name']}:{entry['state']}:{entry['started']}" if entry else ""

    async def run(self, principal: str, thread: str, label: str, tool: str, arguments: dict[str, Any]) -> dict:
        """Call ``tool`` with ``arguments``; return its record once it ends or after ``QUICK_S`` (still running)."""
        key = (principal, thread)
        entry = {"name": label, "state": "running", "message": None, "started": time.time()}
        self.last[key] = entry
        self.last.move_to_end(key)
        while len(self.last) > MAX_TRACKED:
            self.last.popitem(last=False)

        async def call() -> None:
            try:
                await self.mcp.call_tool(tool, arguments)  # the page shows the thread itself, read afresh
                entry["state"], entry["message"] = "ok", "done"
            except Exception as exc:  # ToolError "<code>: <message>" (the MCP client's text), validation errors
                entry["state"], entry["message"] = "error", _message(exc)
                log.info("viewer action %s failed: %s", tool, entry["message"])
            finally:
                entry["ended"] = time.time()

        task = asyncio.create_task(call())  # the request's context (its principal) goes with it
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        await asyncio.wait({task}, timeout=QUICK_S)
        return entry

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            try:
                await task
            except BaseException:
                pass
