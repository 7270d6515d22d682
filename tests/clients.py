"""MCP clients for tests.

``fastmcp.Client`` opts in to MCP background tasks (fastmcp-tasks registers its client half on import), so against
redraft it runs ``refine``, ``resume`` and ``replay`` as tasks and polls for their results. Tests of the foreground
call -- a blocking ``tools/call`` with progress notifications, whose connection a crash cuts -- use ``PlainClient``,
which behaves like the many MCP clients that do not support tasks. ``tests/test_task*.py`` and
``tests/test_runs*.py`` cover the background view with the default client.
"""

from __future__ import annotations

from fastmcp import Client


class PlainClient(Client):
    """A ``fastmcp.Client`` that does not opt in to MCP background tasks."""

    _auto_internal_extensions = False


__all__ = ["PlainClient"]
