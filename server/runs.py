"""Background runs for every MCP client: ``start_refine`` returns a ``run_id`` at once; ``run_status``, ``wait_run``
(a long poll of at most 50 s), ``cancel_run`` and the ``redraft://runs/{run_id}`` resource follow it from any replica.

The run queue is the tasks extension's Docket (``server._docket``: Redis with ``REDRAFT_REDIS_URL``, else in-process):
each run is one Docket task ``redraft_run(run_id)`` keyed by its run id, so whichever replica's worker is free runs it,
a killed worker's run is redelivered, and ``docket.cancel(run_id)`` stops the coroutine wherever it runs. Without a
Docket (no task-enabled tools) runs are plain asyncio tasks of this process. At start-up, the runs the table says are
queued or running are queued again (Docket ignores a key it already holds), so with the in-process queue a restart
picks them up. The truth is the ``redraft_runs`` row (graph/runs.py); progress travels on the bus (graph/bus.py).

No ``from __future__ import annotations``: the tools' argument types are built when they are registered.
"""

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator
from typing import Annotated, Any, Literal

from fastmcp import Context, FastMCP
from fastmcp.exceptions import ResourceError
from fastmcp.server.providers.base import Provider
from pydantic import Field

from redraft.errors import ConflictError, DrainingError, NotFoundError, PhaseError
from redraft.graph.bus import Bus, open_bus
from redraft.graph.runexec import execute_run, run_view
from redraft.graph.runner import _may_start
from redraft.graph.runs import ACTIVE, CANCEL_NOW, FINISHED, STOP_AT_BOUNDARY, RunStore
from redraft.graph.state import phase_of
from redraft.server.drain import handed_back, requeue_now
from redraft.server.middleware import guard
from redraft.server.sessions import principal_key
from redraft.server.tasks import cancel_task_run, forward_progress

log = logging.getLogger("redraft.runs")

TASK_NAME = "redraft_run"
MAX_WAIT_S = 50.0
RUN_QUEUE = "redraft_run"  # request["queue"]: runs this module queues (task-mode calls queue themselves)
Strategy = Literal["reject", "enqueue", "interrupt", "rollback"]


class RunService:
    """This process's handle on background runs: the store, the bus, and the queue (Docket or local tasks)."""

    def __init__(self, mcp: FastMCP, app) -> None:
        self.mcp, self.app = mcp, app
        self.store: RunStore | None = None
        self.bus: Bus | None = None
        self.local: dict[str, asyncio.Task] = {}
        self._own_bus: Bus | None = None

    @property
    def docket(self):
        return getattr(self.mcp, "_docket", None)

    async def open(self) -> None:
        """Start-up (after the tasks extension started Docket): register the task, queue unfinished runs again."""
        self.store = getattr(self.app, "runs", None) or RunStore(self.app.runner.persistence.db)
        self.bus = getattr(self.app, "bus", None)
        if self.bus is None:
            self.bus = self._own_bus = open_bus(self.app.settings.redis_url)
        if self.docket is not None:
            self.docket.register(self._docket_task, names=[TASK_NAME])
        shared = bool(self.app.settings.redis_url) and not self.app.settings.redis_url.startswith("memory://")
        for run in await self.store.list_unfinished():
            if (run["request"] or {}).get("queue") != RUN_QUEUE:
                continue
            # A shared queue still holds a crashed worker's task (Docket redelivers it); a run another replica is
            # running right now (its thread's lease is live) is left alone. An in-process queue died with its
            # process: everything the table says is unfinished is queued again.
            if shared and run["status"] == "running" and await self._lease_live(run["thread_id"]):
                continue
            log.info("queueing unfinished run %s again", run["run_id"])
            await self.enqueue(run["run_id"])

    async def _lease_live(self, thread_id: str) -> bool:
        db = self.app.runner.persistence.db
        row = await db.fetchone(
            f"SELECT 1 AS held FROM redraft_leases WHERE thread_id = ? AND expires_at > {db.now_sql}",
            (thread_id, *db.now_params),
        )
        return row is not None

    async def close(self) -> None:
        """Shutdown: local runs stop where they are (their rows stay running, for the next start)."""
        for task in list(self.local.values()):
            task.cancel()
        for task in list(self.local.values()):
            with contextlib.suppress(BaseException):
                await task
        if self._own_bus is not None:
            await self._own_bus.close()

    async def _docket_task(self, run_id: str) -> None:
        me = asyncio.current_task()
        worker = getattr(self.mcp, "_worker", None)

        def cancelled_by_request() -> bool:
            return me in getattr(worker, "_cancelled_by_docket", ())

        try:
            await execute_run(self.app.runner, self.store, self.bus, run_id, cancelled_by_request=cancelled_by_request)
        except (DrainingError, asyncio.CancelledError) as exc:
            if not handed_back(exc):
                raise
            raise requeue_now() from None  # this replica drains: another worker continues the run at once

    async def enqueue(self, run_id: str) -> None:
        """Queue ``run_id`` for whichever worker is free (a no-op if it is already queued or running)."""
        if self.docket is not None:
            await self.docket.add(TASK_NAME, key=run_id)(run_id)
            return
        if run_id in self.local and not self.local[run_id].done():
            return
        task = asyncio.create_task(execute_run(self.app.runner, self.store, self.bus, run_id))
        self.local[run_id] = task
        task.add_done_callback(lambda t: self.local.pop(run_id, None) if self.local.get(run_id) is t else None)

    async def cancel(self, run_id: str, how: int = CANCEL_NOW) -> dict | None:
        """Cancel a run from any replica: flag it in its row, then (``CANCEL_NOW``) stop its coroutine wherever it
        runs. ``STOP_AT_BOUNDARY`` lets it finish the step in flight."""
        run = await self.store.request_cancel(run_id, how)
        if how == CANCEL_NOW and run is not None:
            if (run["request"] or {}).get("task") and await cancel_task_run(self.mcp, run_id):
                pass  # an MCP task: cancelled as tasks/cancel does (its legs have Docket keys of their own)
            elif self.docket is not None:
                await self.docket.cancel(run_id)
            elif run_id in self.local:
                self.local[run_id].cancel()
        return run

    async def view(self, run_id: str) -> dict:
        """The run's view for its owner (not_found for anyone else)."""
        run = await self.store.get(run_id)
        if run is None or run["principal"] != principal_key():
            raise NotFoundError(f"No run {run_id}.")
        latest = await self.bus.latest(run_id) if run["status"] == "running" else None
        return run_view(run, latest)

    async def wait(self, run_id: str, timeout_s: float) -> dict:
        """Return when the run stops (succeeded, failed, cancelled, interrupted) or after ``timeout_s``."""
        view = await self.view(run_id)
        deadline = time.monotonic() + timeout_s
        events = self.bus.subscribe(run_id)
        pending: asyncio.Future | None = None  # the next event; never cancelled between looks (that would end `events`)
        bus_ok = True
        try:
            while view["status"] in ACTIVE:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                # a stop is announced on the bus; the row is re-read at least once a second regardless
                if bus_ok:
                    pending = pending or asyncio.ensure_future(anext(events))
                    done, _ = await asyncio.wait({pending}, timeout=min(left, 1.0))
                    if pending in done:
                        bus_ok = pending.exception() is None
                        pending = None
                else:
                    await asyncio.sleep(min(left, 0.25))
                view = await self.view(run_id)
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            with contextlib.suppress(Exception):
                await events.aclose()
        return {**view, "timed_out": view["status"] in ACTIVE}

    async def start(self, thread_id: str, session_id: str, companion: str, request: dict, strategy: str) -> dict:
        """Create a refine run on the thread following ``strategy`` toward runs already active there; queue it."""
        active = await self.store.active_for_thread(thread_id)
        replaces: list[str] = []
        if active and strategy == "reject":
            raise ConflictError(
                f"Run {active[0]['run_id']} is {active[0]['status']} on this thread; wait for it, cancel it, or pass "
                "multitask_strategy enqueue, interrupt or rollback."
            )
        if strategy == "interrupt":
            for other in active:  # the running one stops after its step; queued ones never start
                await self.cancel(other["run_id"], STOP_AT_BOUNDARY if other["status"] == "running" else CANCEL_NOW)
                replaces.append(other["run_id"])
        elif strategy == "rollback":
            for other in active:
                await self.cancel(other["run_id"], CANCEL_NOW)
                replaces.append(other["run_id"])
        run = await self.store.create(
            thread_id=thread_id,
            session_id=session_id,
            companion=companion,
            principal=principal_key(),
            kind="refine",
            request={**request, "queue": RUN_QUEUE, "replaces": replaces},
            multitask_strategy=strategy,
        )
        await self.bus.publish(run["run_id"], {"type": "status", "status": "queued", "phase": None})
        await self.enqueue(run["run_id"])
        return run_view(run)


class _RunsLifespan(Provider):
    """A provider with no components: its lifespan runs after the extensions' (so Docket exists) and before serving."""

    def __init__(self, service: RunService) -> None:
        super().__init__()
        self.service = service

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncGenerator[None, None]:
        await self.service.open()
        try:
            yield
        finally:
            await self.service.close()


def register_runs(mcp: FastMCP, app) -> RunService:
    """Add the run tools and resource, and the run queue's start-up; sets ``app.run_service``."""
    from redraft.server.models import Sampling
    from redraft.server.tools import (
        CompanionName,
        MaxCostPerRun,
        MaxLoops,
        MaxTokensPerRun,
        MinScore,
        Threshold,
        _budgets,
        _options,
    )
    from redraft.server.validation import ID_CHARS, text

    service = RunService(mcp, app)
    app.run_service = service
    mcp.add_provider(_RunsLifespan(service))
    NewQuery = text(
        app.settings.max_query_chars, "Start this new query; omit to continue the current one.", optional=True
    )
    RunId = text(ID_CHARS, "The run_id start_refine returned (or an MCP task id).")

    @mcp.tool(annotations={"idempotentHint": False})
    @guard()
    async def start_refine(
        session_id: Annotated[str, Field(description="From create_session.")],
        companion: CompanionName = "generic",
        query: NewQuery = None,
        similarity_threshold: Threshold = None,
        max_loops: MaxLoops = None,
        sampling: Sampling | None = None,
        min_score: MinScore = None,
        max_tokens_per_run: MaxTokensPerRun = None,
        max_cost_per_run: MaxCostPerRun = None,
        multitask_strategy: Annotated[
            Strategy,
            Field(
                description="If a run is already queued or running on this thread: reject (default), enqueue (run "
                "after it), interrupt (stop it at its next step boundary, keep its checkpoints, then run this), or "
                "rollback (cancel it, remove its checkpoints, then run this)."
            ),
        ] = "reject",
    ) -> dict:
        """Start refine as a background run and return its run_id at once. Follow it with run_status, wait_run (a
        long poll) or the redraft://runs/{run_id} resource; stop it with cancel_run. Same arguments as refine."""
        thread = await app.thread(session_id, companion)
        options = _options(similarity_threshold, max_loops, sampling, min_score) if query is not None else {}
        if query is not None:
            options.update(_budgets(max_tokens_per_run, max_cost_per_run))
        # refuse what cannot run now, before anything is created (with a run active on the thread, the thread's
        # phase when this run starts is not known yet: the run itself reports it)
        graph_input = app.runner.open_input(app.runner.companion(companion), query, **options) if query else None
        if not await service.store.active_for_thread(thread):
            state = (await app.runner.snapshot(thread)).values
            if query is None and phase_of(state) in ("empty", "done"):
                raise PhaseError("Nothing to refine: pass a query to start one.")
            if graph_input is not None:
                _may_start(state, graph_input, "starting a new query")
        return await service.start(
            thread, session_id, companion, {"query": query, "options": options}, multitask_strategy
        )

    @mcp.tool(annotations={"readOnlyHint": True})
    @guard()
    async def run_status(run_id: RunId) -> dict:
        """A run's status (queued, running, interrupted, succeeded, failed, cancelled), phase, loop, last similarity,
        elapsed time, tokens so far, error, pending gate, and its result once it stopped."""
        return await service.view(run_id)

    @mcp.tool(annotations={"readOnlyHint": True})
    @guard()
    async def wait_run(
        ctx: Context,
        run_id: RunId,
        timeout_s: Annotated[float, Field(gt=0, le=MAX_WAIT_S, description="Return after this long at most.")] = 30.0,
    ) -> dict:
        """Wait until the run stops or timeout_s (at most 50 s) passes, then return run_status (timed_out tells
        which). Call again to keep waiting. Meanwhile the run's progress (each step, and tokens so far within one)
        comes as progress notifications, from whichever replica runs it."""
        view = await service.view(run_id)  # the caller's run, or not_found -- before any of its progress is forwarded
        forward = asyncio.create_task(forward_progress(ctx, service.bus, run_id, steps=view["steps"]))
        try:
            return await service.wait(run_id, timeout_s)
        finally:
            forward.cancel()

    @mcp.tool(annotations={"idempotentHint": True})
    @guard()
    async def cancel_run(run_id: RunId) -> dict:
        """Cancel a run, even in the middle of a model call. The thread stays at its last checkpoint (resume
        continues it) and the run ends cancelled. Cancelling a finished run changes nothing."""
        await service.view(run_id)  # the caller's run, or not_found
        await service.cancel(run_id)
        return await service.view(run_id)

    @mcp.resource("redraft://runs/{run_id}", mime_type="application/json")
    @guard(ResourceError)
    async def run_resource(run_id: str) -> str:
        """A background run: the same view as run_status."""
        return json.dumps(await service.view(run_id))

    return service


def finished(view: dict[str, Any]) -> bool:
    """Whether a run view is final."""
    return view["status"] in FINISHED
