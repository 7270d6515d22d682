"""Executing a background run: ``execute_run``, called by whichever worker picked the run up (the Docket task of
``start_refine``, or the body of a task-mode tool call), and again by any worker a crashed run is redelivered to.

* A run never starts over. At its first claim it records the thread's head (``base_checkpoint``); a later attempt
  that finds the head moved resumes the thread from its last checkpoint instead of opening the query again.
* Two workers never advance one thread: each step holds the thread's fenced lease (graph/leases.py). A redelivered
  duplicate whose thread is held by the live first worker gets ``ConflictError`` and leaves the run to it.
* Cancellation (``cancel_run``: the Docket task is cancelled, wherever it runs) ends the run ``cancelled`` at once,
  model call included; the thread stays at its last checkpoint and can be resumed. A shutdown's cancellation leaves
  the run ``running`` for a restart (or another replica) to pick up; so does a drain (``DrainingError``, raised to the
  caller, which hands the run to another worker at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from redraft.errors import ConflictError, DrainingError, LeaseLostError, NotFoundError, RedraftError
from redraft.graph.bus import Bus
from redraft.graph.database import OWNER
from redraft.graph.multitask import close_current_query, rollback_to
from redraft.graph.runner import Runner
from redraft.graph.runprogress import CancelledAtBoundary, Progress, StopAtBoundary, head_checkpoint_id
from redraft.graph.runs import CANCEL_NOW, FINISHED, RunStore, run_view
from redraft.graph.view import pending_gate
from redraft.observability import logs

log = logging.getLogger("redraft.runs")

__all__ = ["execute_run", "head_checkpoint_id", "run_view"]

QUEUE_POLL_INTERVAL = 0.1  # seconds between looks at an earlier run on the thread (enqueue)
LEASE_RETRIES = 3  # times a run continues after losing its step lease to slowness (nothing of that step committed)


async def _wait_for_earlier_runs(store: RunStore, run: dict) -> None:
    """multitask_strategy="enqueue": start only once every earlier active run on the thread has stopped."""
    while True:
        earlier = [
            r
            for r in await store.active_for_thread(run["thread_id"])
            if r["run_id"] != run["run_id"] and (r["created_at"], r["run_id"]) < (run["created_at"], run["run_id"])
        ]
        if not earlier:
            return
        await asyncio.sleep(QUEUE_POLL_INTERVAL)


async def execute_run(
    runner: Runner,
    store: RunStore,
    bus: Bus,
    run_id: str,
    *,
    decision: dict | None = None,
    cancelled_by_request: Callable[[], bool] | None = None,
    worker: str = OWNER,
    run: dict | None = None,
    claimed: bool = False,
) -> dict:
    """Run (or continue) the run ``run_id`` to its next stop and return its ``run_view``. ``run`` is its record when
    the caller has just read it (saves reading it again); ``claimed``: the caller has just claimed it for ``worker``
    as a first attempt, with its base checkpoint (``RunStore.claim``'s effect, folded into the caller's statement).

    A finished run is returned as is (a redelivered duplicate is a no-op). ``decision`` answers the pending gate of a
    run interrupted at one. ``cancelled_by_request`` tells a cancellation by request (``tasks/cancel``, which sets no
    flag) from a shutdown's; ``cancel_run`` sets the run's ``cancel_requested`` flag, which is always checked."""
    run = run or await store.get(run_id)
    if run is None:
        raise NotFoundError(f"No run {run_id}.")
    if run["status"] in FINISHED:
        return run_view(run)
    if run["cancel_requested"] == CANCEL_NOW:
        await _finish(store, bus, run, "cancelled", error_code="cancelled", error_message="Cancelled.")
        return run_view(await store.get(run_id))
    try:
        with logs.bind(run=run_id, session=run.get("session_id")):  # every line of the run names it (JSON logs)
            return await _execute(runner, store, bus, run, decision, worker, claimed)
    except asyncio.CancelledError:
        # wherever it landed -- waiting its turn, claiming, mid step or mid model call -- a requested cancel ends
        # the run cancelled; the lease of a step in flight is released by the step itself (graph/leases.py)
        current = await asyncio.shield(store.get(run_id))
        if (current and current["cancel_requested"] == CANCEL_NOW) or (
            cancelled_by_request is not None and cancelled_by_request()
        ):
            await asyncio.shield(_finish_cancelled(store, bus, run))
        elif current and current["worker"] == worker:  # shutting down: a restart or another replica continues it
            with contextlib.suppress(Exception):
                await asyncio.shield(store.update(run_id, worker=run["worker"], expect=("running",)))
        raise


async def _execute(
    runner: Runner, store: RunStore, bus: Bus, run: dict, decision: dict | None, worker: str, claimed: bool
) -> dict:
    """execute_run's body from the claim on (its caller handles cancellation)."""
    run_id = run["run_id"]
    if claimed:
        return await _steps(runner, store, bus, run, decision, worker, False, True, run["base_checkpoint"])
    if run["multitask_strategy"] != "reject" and run["status"] == "queued":
        await _wait_for_earlier_runs(store, run)  # enqueue; interrupt and rollback wait for the runs they stopped
    redelivered = run["status"] == "running"  # someone claimed it before: a crashed worker, or a live duplicate
    thread_id = run["thread_id"]
    # A first attempt that edits nothing starts at the thread's head: read it, then claim the run and record that
    # base in one statement (a base set meanwhile by a duplicate delivery stands). Otherwise claim, then look.
    first = run["status"] == "queued" and run["base_checkpoint"] is None and not _edits_thread(run)
    head = await head_checkpoint_id(runner, thread_id) if first else None
    mine = await store.claim(run_id, worker, base_checkpoint=head)
    if mine is None:  # finished (or cancelled while queued) in the meantime
        return run_view(await store.get(run_id))
    if mine["attempts"] != (run["attempts"] or 0) + 1:
        # another delivery claimed it between our read and our claim: it is the first worker, this is the duplicate
        # (which waits on the thread's lease, advancing nothing, instead of failing the run with a conflict)
        redelivered = True
    if head is None:
        head = await head_checkpoint_id(runner, thread_id)
    base = mine["base_checkpoint"]
    if base is None:  # the first attempt: apply the strategy's thread edit, then remember where the run starts
        if await _prepare_thread(runner, store, run):
            head = await head_checkpoint_id(runner, thread_id)
        base = head
        await store.update(run_id, base_checkpoint=base)
    started_here = head == base  # nothing of this run was committed yet
    return await _steps(runner, store, bus, run, decision, worker, redelivered, started_here, base)


async def _steps(
    runner: Runner,
    store: RunStore,
    bus: Bus,
    run: dict,
    decision: dict | None,
    worker: str,
    redelivered: bool,
    started_here: bool,
    base: str,
) -> dict:
    """The claimed run's steps to its next stop, and its record's final update."""
    run_id, thread_id = run["run_id"], run["thread_id"]
    # the phase is the run's own until its first step reports one (run_view falls back to the record's); sent while
    # the run starts (a Redis round trip need not come first), and every later event of this worker after it
    bus = _InOrder(bus, {"type": "status", "status": "running", "phase": None, "worker": worker}, run_id)

    progress = Progress(runner, store, bus, run_id, thread_id, run)
    conflict_until = time.monotonic() + runner.persistence.db.lease_ttl + 2.0
    lease_retries = LEASE_RETRIES
    while True:
        try:
            result = await _call(runner, run, started_here, decision, progress)
            break
        except ConflictError:
            # The thread's lease is held: by a crashed holder until its lease lapses, or by a live worker. A run that
            # was already running when this delivery claimed it is a duplicate delivery: its first worker holds the
            # lease, so this one waits (advancing nothing) until that worker finishes the run -- or dies, when the
            # lease lapses and this delivery continues the run from its last checkpoint.
            current = await store.get(run_id)
            if current is None or current["status"] in FINISHED:
                return run_view(current or run)
            if redelivered or time.monotonic() < conflict_until:
                await asyncio.sleep(0.25 if time.monotonic() < conflict_until else 1.0)
                head = await head_checkpoint_id(runner, thread_id)
                started_here = head == base
                continue
            await _finish(store, bus, run, "failed", error_code=ConflictError.code, error_message=_conflict_message())
            return run_view(await store.get(run_id))
        except StopAtBoundary:
            await _finish(
                store,
                bus,
                run,
                "interrupted",
                expect=("running",),
                progress_message="Stopped by a newer run.",
                result=await _safe_status(runner, thread_id),
            )
            return run_view(await store.get(run_id))
        except CancelledAtBoundary:
            await _finish_cancelled(store, bus, run)
            return run_view(await store.get(run_id))
        except LeaseLostError as exc:
            current = await store.get(run_id)
            if current["worker"] != worker:  # another worker took the run over: it is theirs now
                return run_view(current)
            if lease_retries > 0:  # a slow moment (renewal late): nothing was committed; continue from the thread
                lease_retries -= 1
                log.info("run %s lost its step lease; continuing from the last checkpoint", run_id)
                await asyncio.sleep(0.5)
                head = await head_checkpoint_id(runner, thread_id)
                started_here = head == base
                continue
            await _finish(store, bus, run, "failed", error_code=exc.code, error_message=exc.message)
            return run_view(await store.get(run_id))
        except DrainingError:
            # this process is shutting down and the run stopped at a step boundary (nothing of the next step was
            # committed, the lease is released): it stays running for the caller to hand to another worker
            await store.update(
                run_id, worker=run["worker"], progress_message="Handed to another worker.", expect=("running",)
            )
            raise
        except RedraftError as exc:
            await _finish(store, bus, run, "failed", error_code=exc.code, error_message=exc.message)
            return run_view(await store.get(run_id))
        except Exception as exc:
            log.exception("run %s failed", run_id)
            await _finish(store, bus, run, "failed", error_code="internal_error", error_message=type(exc).__name__)
            return run_view(await store.get(run_id))

    status = "interrupted" if result.get("pending_gate") else "succeeded"
    await _finish(
        store,
        bus,
        run,
        status,
        expect=("running",),
        result=result,
        last_checkpoint=result.get("checkpoint_id"),
        progress_message="Waiting for a decision at a gate." if status == "interrupted" else "Done.",
        phase=result.get("phase"),
        tokens=progress.tokens,
    )
    return run_view(await store.get(run_id))


_sending: set[asyncio.Future] = set()


class _InOrder(Bus):
    """The bus, with a first event sent in the background: each later publish waits for it, so they stay in order."""

    def __init__(self, bus: Bus, event: dict, run_id: str) -> None:
        self._bus = bus
        self._first: asyncio.Future | None = asyncio.ensure_future(bus.publish(run_id, event))
        _sending.add(self._first)  # held until sent, whether or not a later event waits for it
        self._first.add_done_callback(_sending.discard)

    async def publish(self, run_id: str, event: dict) -> None:
        if self._first is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._first)
            self._first = None
        await self._bus.publish(run_id, event)


def _edits_thread(run: dict) -> bool:
    """Whether the run's strategy edits the thread before its first step (see ``_prepare_thread``)."""
    request = run["request"] or {}
    return bool(request.get("replaces")) and run["multitask_strategy"] in ("rollback", "interrupt")


async def _prepare_thread(runner: Runner, store: RunStore, run: dict) -> bool:
    """Before a run's first step: ``rollback`` removes the checkpoints of the runs it cancelled; ``interrupt`` with a
    new query closes the query the runs it stopped left unfinished. True if the thread changed."""
    strategy, request = run["multitask_strategy"], run["request"] or {}
    if strategy == "rollback":
        bases = []
        for other in request.get("replaces") or []:
            replaced = await store.get(other)
            if replaced and replaced["base_checkpoint"] is not None:
                bases.append(replaced["base_checkpoint"])
        if bases:
            await rollback_to(runner, run["thread_id"], min(bases))
            return True
    if strategy == "interrupt" and run["kind"] == "refine" and request.get("query") and request.get("replaces"):
        return await close_current_query(runner, run["thread_id"], f"interrupted by run {run['run_id']}")
    return False


def _conflict_message() -> str:
    return "Another step is running on this thread; retry when it has finished."


async def _call(runner: Runner, run: dict, started_here: bool, decision: dict | None, progress: Progress) -> dict:
    """The one runner call for this attempt: open the run's work if nothing was committed yet, else continue it."""
    thread_id, request = run["thread_id"], run["request"] or {}
    if started_here:
        if run["kind"] == "refine":
            options = {k: v for k, v in (request.get("options") or {}).items() if v is not None}
            return await runner.refine(
                thread_id,
                run["companion"],
                request.get("query"),
                on_step=progress.step,
                on_token=progress.token,
                **options,
            )
        if run["kind"] == "replay":
            from redraft.graph.timetravel import replay

            return await replay(runner, thread_id, request["checkpoint_id"], on_step=progress.step)
        return await runner.resume(thread_id, decision or request.get("decision"), on_step=progress.step)
    # this run already committed steps: continue from the thread's last checkpoint, never start over
    snap = await runner.snapshot(thread_id)
    if not snap.next and not snap.tasks:
        return await runner.status(thread_id)  # it finished before its worker could record that
    if pending_gate(snap) is not None and decision is None:
        return await runner.status(thread_id)  # still waiting for its human decision
    return await runner.resume(thread_id, decision, on_step=progress.step)


async def _safe_status(runner: Runner, thread_id: str) -> dict | None:
    with contextlib.suppress(Exception):
        return await runner.status(thread_id)
    return None


async def _finish(store: RunStore, bus: Bus, run: dict, status: str, *, expect=("running",), **fields: Any) -> None:
    if status in FINISHED and status != "succeeded":
        fields.setdefault("progress_message", status.capitalize() + ".")
    if status == "succeeded":
        fields.setdefault("error_code", None)
    if status in ("succeeded", "interrupted"):
        fields["cancel_requested"] = 0
    await store.finish(run["run_id"], status, expect=expect, **fields)
    await bus.publish(run["run_id"], {"type": "finished", "status": status, "phase": None})


async def _finish_cancelled(store: RunStore, bus: Bus, run: dict) -> None:
    await _finish(
        store,
        bus,
        run,
        "cancelled",
        expect=("running", "queued", "interrupted"),
        error_code="cancelled",
        error_message="Cancelled; the thread stays at its last checkpoint (resume continues it).",
    )
