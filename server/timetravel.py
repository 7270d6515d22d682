"""MCP tools and resource for time travel: history, state_at, fork, replay, diff.

No ``from __future__ import annotations``: the edited texts' type is built from the settings at registration.
"""

import json
from typing import Annotated

from fastmcp import Context, FastMCP
from fastmcp.exceptions import ResourceError
from fastmcp.server.sessions import SessionId
from pydantic import Field

from redraft.graph import timetravel as tt
from redraft.server.middleware import guard
from redraft.server.models import DiffResult, HistoryPage, ThreadView
from redraft.server.resources import BASE
from redraft.server.tasks import TASK, run_task, task_id_of, task_thread
from redraft.server.tools import CompanionName, progress_reporter, view
from redraft.server.validation import ID_CHARS, text

CheckpointId = text(ID_CHARS, "A checkpoint id from `history`.")


def register_timetravel(mcp: FastMCP, app) -> None:
    text_chars = app.settings.max_text_chars
    Critique = text(text_chars, "Replace the pending critique at that checkpoint.", optional=True)
    Revision = text(text_chars, "Replace the latest revision at that checkpoint.", optional=True)

    @mcp.tool(annotations={"readOnlyHint": True})
    @guard()
    async def history(
        session_id: SessionId,
        companion: CompanionName = "generic",
        limit: Annotated[int, Field(ge=1, le=tt.MAX_PAGE)] = 20,
        before: text(ID_CHARS, "`next_before` of the previous page", optional=True) = None,
    ) -> HistoryPage:
        """The thread's checkpoints, newest first: node, phase, lengths, similarity, branch."""
        thread = await app.thread(session_id, companion)
        return HistoryPage(**await tt.history(app.runner, thread, limit, before))

    @mcp.tool(annotations={"readOnlyHint": True})
    @guard()
    async def state_at(
        session_id: SessionId, checkpoint_id: CheckpointId, companion: CompanionName = "generic"
    ) -> ThreadView:
        """The thread as it was at a past checkpoint."""
        thread = await app.thread(session_id, companion)
        return view(session_id, companion, await tt.state_at(app.runner, thread, checkpoint_id))

    @mcp.tool
    @guard()
    async def fork(
        session_id: SessionId,
        checkpoint_id: CheckpointId,
        companion: CompanionName = "generic",
        critique: Critique = None,
        revision: Revision = None,
    ) -> ThreadView:
        """Branch from a past checkpoint with an edited critique or revision. The original branch stays readable
        (state_at); the thread continues from the fork with refine or resume."""
        thread = await app.thread(session_id, companion)
        return view(session_id, companion, await tt.fork(app.runner, thread, checkpoint_id, critique, revision))

    @mcp.tool(task=TASK)
    @guard()
    async def replay(
        ctx: Context, session_id: SessionId, checkpoint_id: CheckpointId, companion: CompanionName = "generic"
    ) -> ThreadView:
        """Re-run the thread from a past checkpoint (new model calls, on a new branch)."""
        if task_id_of(ctx):  # a background task bound to its run record (server/tasks.py)
            thread = await task_thread(app, ctx, session_id, companion)

            async def show(result: dict) -> ThreadView:
                return view(session_id, companion, result)

            request = {"checkpoint_id": checkpoint_id}
            return await run_task(
                app,
                ctx,
                kind="replay",
                session_id=session_id,
                companion=companion,
                thread=thread,
                request=request,
                show=show,
            )
        thread = await app.thread(session_id, companion)
        return view(session_id, companion, await tt.replay(app.runner, thread, checkpoint_id, progress_reporter(ctx)))

    @mcp.tool(annotations={"readOnlyHint": True})
    @guard()
    async def diff(
        session_id: SessionId,
        from_version: Annotated[int, Field(ge=0, description="0 = the draft, k = revision k")],
        to_version: Annotated[int, Field(ge=0)],
        companion: CompanionName = "generic",
        checkpoint_id: text(ID_CHARS, "As of this checkpoint (default: the latest).", optional=True) = None,
    ) -> DiffResult:
        """Word diff and similarity of two versions of the current query (optionally as of a checkpoint)."""
        thread = await app.thread(session_id, companion)
        result = await tt.diff(app.runner, thread, from_version, to_version, checkpoint_id)
        return DiffResult(
            from_version=result["from"], to_version=result["to"], similarity=result["similarity"], diff=result["diff"]
        )

    @mcp.resource(f"{BASE}/history", mime_type="application/json")
    @guard(ResourceError)
    async def history_resource(session_id: str, companion: str) -> str:
        """The newest page of the thread's checkpoint history."""
        thread = await app.thread(session_id, companion)
        return json.dumps(await tt.history(app.runner, thread))
