"""MCP background tasks (extension ``io.modelcontextprotocol/tasks``, SEP-2663) for refine, resume and replay.

A client that opts in to the tasks extension gets a task id from ``tools/call`` at once; a Docket worker (in this
process, or in any replica sharing ``REDRAFT_REDIS_URL``) runs the tool body, and the client polls ``tasks/get``.
Inside that body ``ctx.task_id`` is the task id, ``ctx.report_progress(..., message)`` sets the task's status message
(stored by Docket, so a poll through any replica sees it), a returned ``InputRequiredResult`` parks the task in
``input_required`` (the worker is freed; ``tasks/update`` re-runs the body with ``ctx.input_responses``), and
``tasks/cancel`` cancels the coroutine where it runs.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from fastmcp.utilities.tasks import TaskConfig
from fastmcp_tasks import TasksExtension

from redraft.settings import Settings

# Tools whose calls may run as background tasks when the client asks for one; a client that does not gets the
# ordinary blocking call. Clients poll once a second (progress lags the run by at most that).
TASK = TaskConfig(mode="optional", poll_interval=timedelta(seconds=1))


def tasks_extension(settings: Settings) -> TasksExtension:
    """The tasks extension on Redis (``REDRAFT_REDIS_URL``: every replica's worker serves one queue, named by
    ``FASTMCP_DOCKET_NAME``, default ``fastmcp``) or, unset, on Docket's in-process ``memory://`` backend. In-process
    queues get a name of their own: several apps in one process (tests) must not run each other's tasks."""
    if settings.redis_url and not settings.redis_url.startswith("memory://"):
        return TasksExtension(url=settings.redis_url)
    return TasksExtension(url="memory://", name=f"redraft-{uuid.uuid4().hex[:12]}")
