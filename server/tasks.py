"""MCP background tasks (extension ``io.modelcontextprotocol/tasks``, SEP-2663) for refine, resume and replay.

A client that opts in to the tasks extension gets a task id from ``tools/call`` at once; a Docket worker (in this
process, or in any replica sharing ``REDRAFT_REDIS_URL``) runs the tool body, and the client polls ``tasks/get``.
How fastmcp-tasks drives that body:

* ``ctx.task_id`` is the task id (``ctx.is_background_task``); it is also the run id of the run record the body binds
  (``redraft_runs``), so ``run_status(task_id)`` and ``tasks/get`` are two views of one run;
* ``ctx.report_progress(progress, total, message)`` sets the task's status message, stored by Docket (in Redis), so a
  poll through any replica sees it; the body forwards the run's progress events (graph/bus.py) there;
* returning an ``InputRequiredResult`` parks the task in ``input_required``: the leg ends and frees its worker.
  ``tasks/update`` enqueues the next leg, which runs the body again (same arguments) with ``ctx.input_responses``;
* ``tasks/cancel`` marks the task cancelled and cancels the coroutine wherever it runs (CancelledError in the body).

A step-mode gate is asked as a form elicitation keyed by gate, slot and round, so an answer can only ever decide the
gate it was asked for. Tool clients see the same run as ``run_status`` = interrupted with the pending gate, and answer
it with ``resume``, which hands the decision to the parked task (or, for a run no task waits on, runs it itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from datetime import timedelta
from typing import Any

import mcp_types
from fastmcp import Context
from fastmcp.utilities.tasks import TASKS_EXTENSION_ID, TaskConfig
from fastmcp_tasks import TasksExtension

from redraft.errors import ConflictError, DrainingError, InvalidInputError, RedraftError, StorageError
from redraft.graph.database import OWNER
from redraft.graph.runexec import execute_run
from redraft.graph.runner import thread_id_for
from redraft.graph.runprogress import HEAD_SQL, local_head
from redraft.graph.runs import ACTIVE
from redraft.server.drain import handed_back, requeue_task_leg
from redraft.server.sessions import principal_key
from redraft.server.task_gates import answer_to, ask, checked_answer
from redraft.server.taskcreate import create_task, forget_note, note_run, noted_thread, opted_in, optional_task_tool
from redraft.settings import Settings

log = logging.getLogger("redraft.tasks")

# Tools whose calls may run as background tasks when the client asks for one; a client that does not gets the
# ordinary blocking call. Clients poll once a second (progress lags the run by at most that).
TASK = TaskConfig(mode="optional", poll_interval=timedelta(seconds=1))
NOTED = ("refine", "replay")  # task kinds whose run record is written before the task id is returned
TOUCH_EVERY_S = 1.0  # a running task records activity on its session at most this often


ELICIT_KEY_TTL_S = 7 * 24 * 3600


class RedraftTasks(TasksExtension):
    """The tasks extension, creating a task in fewer round trips (server/taskcreate.py) with redraft's run record
    written meanwhile, and noting per task whether its client can answer an elicitation (declared the elicitation
    capability on the ``tools/call``): a gate is asked only of a client that can answer it (MCP forbids sending an
    elicitation to one that cannot); to any other it ends the task with the thread at its pending gate."""

    async def intercept_tool_call(self, params, context, call_next):
        if not opted_in(context, TASKS_EXTENSION_ID):
            # a foreground call: every task tool of redraft's is ``optional``, so the library would look the tool
            # up (a walk over the server's providers) only to call it in the foreground
            return await call_next()
        tool = await optional_task_tool(params, context) if self.server._docket is not None else None
        if tool is None:  # a task the library's own path creates (or refuses)
            return await super().intercept_tool_call(params, context, call_next)
        caps = ((context.request_context and context.request_context.meta) or {}).get(
            mcp_types.CLIENT_CAPABILITIES_META_KEY
        )
        can = isinstance(caps, dict) and isinstance(caps.get("elicitation"), dict)
        note = None
        if params.name in NOTED:
            note = functools.partial(note_run, self.server, kind=params.name, args=params.arguments or {})
        return await create_task(
            tool, params, context, note=note, flags={ELICIT_KEY: ("1" if can else "0", ELICIT_KEY_TTL_S)}
        )

    async def _handle_get(self, ctx, params):
        """``tasks/get``; a client that collects a task's result (or its gate) is active on the run's session, as a
        blocking call's end is (SessionActivityMiddleware), so the session's idle time counts from here."""
        result = await super()._handle_get(ctx, params)
        if result.status in ("completed", "input_required"):
            app = (self.server._lifespan_result or {}).get("redraft")
            with contextlib.suppress(Exception):
                run = await app.runs.get(params.task_id)
                if run is not None:
                    await app.sessions.touch_quietly(run["principal"], run["session_id"])
        return result


ELICIT_KEY = "redraft:can-elicit:{task_id}"


def _elicit_key(docket, task_id: str) -> str:
    return docket.key(ELICIT_KEY.format(task_id=task_id))


async def can_elicit(ctx: Context) -> bool:
    """Whether this task's client declared it can answer elicitations (noted just after the task was created; a gate
    comes after at least one step, but wait briefly in case this worker outran that write)."""
    docket = ctx.fastmcp._docket
    if docket is None:
        return False
    for _ in range(50):
        async with docket.redis() as redis:
            value = await redis.get(_elicit_key(docket, ctx.task_id))
        if value is not None:
            return value in (b"1", "1")
        await asyncio.sleep(0.02)
    return False


def tasks_extension(settings: Settings) -> TasksExtension:
    """The tasks extension on Redis (``REDRAFT_REDIS_URL``: every replica's worker serves one queue, named by
    ``FASTMCP_DOCKET_NAME``, default ``fastmcp``) or, unset, on Docket's in-process ``memory://`` backend. In-process
    queues get a name of their own: several apps in one process (tests) must not run each other's tasks."""
    # a dead worker's task goes to another worker once its step lease has lapsed (Docket's default: 300 s); a live
    # worker renews its claim every quarter of this, so a long run is never handed over while it runs
    redelivery = timedelta(seconds=settings.lease_ttl_seconds)
    if settings.redis_url and not settings.redis_url.startswith("memory://"):
        return RedraftTasks(url=settings.redis_url, redelivery_timeout=redelivery)
    return RedraftTasks(url="memory://", name=f"redraft-{uuid.uuid4().hex[:12]}", redelivery_timeout=redelivery)


def task_id_of(ctx: Context | None) -> str | None:
    """The MCP task id when this call runs as a background task, else None."""
    return ctx.task_id if ctx is not None and ctx.is_background_task else None


# --- the task-mode body ---------------------------------------------------------------------------------------------


async def task_thread(app, ctx: Context, session_id: str, companion: str) -> str:
    """``app.thread`` for a task body; a first leg whose run this process noted at creation has had it done already.
    A refused session or companion changes nothing: the run noted at task creation is removed again (the task itself
    ends with the error)."""
    thread = noted_thread(ctx.task_id)
    if thread is not None and thread == thread_id_for(session_id, companion):
        return thread
    try:
        return await app.thread(session_id, companion)
    except RedraftError:
        with contextlib.suppress(Exception):
            await forget_note(app, ctx.task_id)
        raise


async def run_task(
    app, ctx: Context, *, kind: str, session_id: str, companion: str, thread: str, request: dict, show
) -> Any:
    """The body of refine / resume / replay as a task: bind (or create) the run named by the task id, run it to its
    next stop, and say how the task ends: the tool's result (``await show(thread dict)``; built before this run is
    counted in the learning stats), an ``InputRequiredResult`` (a gate), or raise."""
    run_id = ctx.task_id
    fields = {
        "thread_id": thread,
        "session_id": thread.rsplit(":", 1)[0],
        "companion": companion,
        "kind": kind,
        "request": {**request, "task": True},
    }
    # the usual first leg: complete the run noted at creation and claim it, in one statement, while no other run
    # holds the thread; it starts at the thread's head
    run = await app.runs.claim_noted(run_id, fields, OWNER, local_head(app.runner, thread), HEAD_SQL)
    claimed = run is not None
    if run is None:
        run = await app.runs.get(run_id)
        if run is None or (run["status"] == "queued" and not run["attempts"]):  # not noted yet, or the thread is busy
            run = await _first_leg(app, run_id, run, fields)
    decision = None
    if run["status"] == "interrupted":
        gate = (run.get("result") or {}).get("pending_gate")
        if gate is not None:
            answer = answer_to(gate, ctx.input_responses)
            if answer is None:  # nothing answered this gate yet (say, a redelivered leg): ask (again)
                return ask(gate)
            if answer.action != "accept":  # declined: the task ends; the run waits for a decision through resume
                await app.runs.update(run_id, request={**(run["request"] or {}), "task": False})
                return await show(run["result"])
            try:
                decision = checked_answer(app, gate, answer.content or {})
            except InvalidInputError as exc:
                return ask(gate, problem=exc.message)
    started = time.monotonic()
    try:
        outcome = await _execute(app, ctx, run, decision, session_id, claimed)
    except (DrainingError, asyncio.CancelledError) as exc:
        if not handed_back(exc):
            raise
        return await requeue_task_leg(ctx.fastmcp)  # this replica drains: another worker continues the task
    elapsed = time.monotonic() - started
    result = outcome.get("result") if outcome["status"] in ("succeeded", "interrupted") else None
    gate = outcome.get("pending_gate") if outcome["status"] == "interrupted" else None
    asking = gate is not None and await can_elicit(ctx)
    reply = await show(result) if result is not None and not asking else None
    if result is not None:
        full_run = kind == "refine" and request.get("query") is not None and decision is None
        await _learn(app, kind, result, elapsed, full_run)
    if asking:
        return ask(gate)
    if gate is not None:
        # no one to ask: the task ends with the thread at its gate; resume answers it (the run waits, interrupted)
        await app.runs.update(run_id, request={**(run["request"] or {}), "task": False})
        return reply
    if outcome["status"] == "succeeded":
        return reply
    return ending(outcome)  # raises the run's error


async def _learn(app, name: str, data: dict, elapsed: float, full_run: bool) -> None:
    """The learning stats a blocking call records in LearningMiddleware (server/middleware.py), for a task's run."""
    companion = (data.get("run_config") or {}).get("companion")
    if app.stats is None or not companion or data.get("phase") is None:
        return
    try:
        await app.stats.record_call(companion, name, data, elapsed, full_run)
    except Exception:
        log.warning("could not record stats for a %s task", name, exc_info=True)


async def _first_leg(app, run_id: str, run: dict | None, fields: dict) -> dict:
    """The first leg's record when the one-statement claim did not apply: refuse a busy thread, else write it."""
    thread = fields["thread_id"]
    busy = [r["run_id"] for r in await app.runs.active_for_thread(thread) if r["run_id"] != run_id]
    if busy:
        error = ConflictError(f"Run {busy[0]} is active on this thread; wait for it (run_status) or cancel it.")
        if run is not None:
            await app.runs.finish(
                run_id, "failed", expect=("queued",), error_code=error.code, error_message=error.message
            )
        raise error
    if run is None:
        with contextlib.suppress(Exception):  # noted at creation meanwhile: the same run
            await app.runs.create(run_id=run_id, principal=principal_key(), **fields)
    await app.runs.update(run_id, expect=("queued",), **fields)
    run = await app.runs.get(run_id)  # queued with our fields; or not queued any more (a cancel), or not written
    if run is None:
        raise StorageError("The run record could not be written; nothing ran.")
    return run


async def _execute(app, ctx: Context, run: dict, decision: dict | None, session_id: str, claimed: bool) -> dict:
    """execute_run with the run's progress forwarded to the task's status message; a ``tasks/cancel`` ends the run
    cancelled (a shutdown's cancellation leaves it running, for a restart or another replica to continue). The run
    counts as activity on its session, so a session whose TTL is shorter than the run does not expire under it."""
    principal, run_id = principal_key(), run["run_id"]

    async def touch() -> None:
        await app.sessions.touch_quietly(principal, session_id)

    forward = asyncio.create_task(forward_progress(ctx, app.bus, run_id, touch))
    await asyncio.sleep(0)  # let the forwarder subscribe before the run publishes
    try:
        return await execute_run(app.runner, app.runs, app.bus, run_id, decision=decision, run=run, claimed=claimed)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            if await asyncio.shield(_cancelled_by_client(ctx)):
                await asyncio.shield(_finish_cancelled(app, run_id))
        raise
    finally:
        forward.cancel()
        with contextlib.suppress(Exception):
            await asyncio.shield(touch())


async def forward_progress(ctx: Context, bus, run_id: str, touch=None, steps: int = 0) -> None:
    """Forward a run's progress events (from any replica, over the bus) to ``ctx.report_progress``: the task's status
    message inside a task; MCP progress notifications in a call that carries a progress token (``wait_run``). The
    progress value is the steps done (from ``steps``), plus a growing fraction for each "tokens so far" within a step,
    so it increases with every notification."""
    touched, within = time.monotonic(), 0
    try:
        async for event in bus.subscribe(run_id):
            if event.get("type") not in ("step", "tokens"):
                continue
            message = event.get("message") or ""
            if event.get("type") == "tokens":
                within += 1
                progress = steps + within / (within + 1)
            else:
                steps, within = max(steps + 1, int(event.get("steps") or 0)), 0
                progress = steps
                loop, similarity = event.get("loop"), event.get("similarity")
                message += f" (loop {loop}" + (f", similarity {similarity:.3f})" if similarity is not None else ")")
                if touch is not None and time.monotonic() - touched > TOUCH_EVERY_S:
                    touched = time.monotonic()
                    await touch()
            await ctx.report_progress(progress, event.get("total"), message)
    except asyncio.CancelledError:
        raise
    except Exception:  # progress is best effort: the run must not fail on it
        log.info("progress of task %s not forwarded", run_id, exc_info=True)


async def _cancelled_by_client(ctx: Context) -> bool:
    """Whether a ``tasks/cancel`` (rather than a shutdown) cancelled this task."""
    from fastmcp_tasks.context import get_task_context
    from fastmcp_tasks.input_store import is_cancelled

    info, docket = get_task_context(), ctx.fastmcp._docket
    return info is not None and docket is not None and await is_cancelled(docket, info.task_scope, info.task_id)


async def _finish_cancelled(app, run_id: str) -> None:
    message = "Cancelled; the thread stays at its last checkpoint (resume continues it)."
    await app.runs.finish(
        run_id, "cancelled", expect=(*ACTIVE, "interrupted"), error_code="cancelled", error_message=message
    )
    await app.bus.publish(run_id, {"type": "finished", "status": "cancelled", "phase": None})


def ending(outcome: dict, in_task: bool = True) -> dict | mcp_types.InputRequiredResult:
    """A run's view -> the thread view a completed call carries, an ask for its gate (a task's; a blocking call shows
    the thread with its pending gate), or its error."""
    status = outcome["status"]
    if status == "succeeded":
        return outcome["result"]
    if status == "interrupted" and outcome.get("pending_gate"):
        return ask(outcome["pending_gate"]) if in_task else outcome["result"]
    if status == "running":  # a live worker elsewhere holds this run (a duplicate delivery): report, don't wait
        raise ConflictError(f"Run {outcome['run_id']} is running on another worker; poll run_status for it.")
    error = outcome.get("error") or {"code": "conflict", "message": "The run was stopped by a newer run."}
    raise run_error(error["code"], error["message"])


def run_error(code: str, message: str) -> RedraftError:
    """A run's recorded error as the RedraftError a client sees (``<code>: <message>``, retryable as its kind is)."""
    exc = RedraftError(message)
    exc.code = code
    exc.retryable = any(cls.code == code and cls.retryable for cls in _error_classes(RedraftError))
    return exc


def _error_classes(base: type) -> list[type]:
    return [cls for sub in base.__subclasses__() for cls in (sub, *_error_classes(sub))]


async def cancel_task_run(server, run_id: str) -> bool:
    """``cancel_run`` for a run born as an MCP task: cancel it as ``tasks/cancel`` does (the task reads cancelled, its
    current leg's coroutine is cancelled wherever it runs, and the body ends the run cancelled). False if the caller
    has no such task (then only the run's flag stops it, at its next step)."""
    from fastmcp_tasks.handlers import tasks_cancel
    from mcp.shared.exceptions import MCPError

    if server._docket is None:
        return False
    try:
        await tasks_cancel(server, run_id)
    except MCPError:
        return False
    return True


__all__ = [
    "TASK",
    "cancel_task_run",
    "ending",
    "run_task",
    "task_id_of",
    "tasks_extension",
]
