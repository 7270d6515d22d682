"""Graceful drain: on SIGTERM or SIGINT the server stops taking work, lets the steps in flight finish, hands its runs
and leases back, and exits 0.

1. **Stop taking work.** ``AppState.draining`` turns ``/readyz`` to 503 (the load balancer routes away) and new tool
   calls get the retryable ``draining`` error (``DrainMiddleware``). The model provider starts no new step
   (``ModelProvider.draining``), so every refine and background run stops at its next step boundary; the Docket
   worker takes no new task (its concurrency drops to 0; it keeps renewing the tasks it runs).
2. **Let running steps finish**, for up to ``REDRAFT_DRAIN_SECONDS`` (default 30): the drain waits until this process
   holds no thread lease (graph/leases.py ``HELD``). A foreground ``refine`` answers ``draining`` after its step; the
   thread is durable, so the client's retry continues it on another replica.
3. **Hand back.** A background run that stopped at its boundary is handed to another worker at once: a
   ``start_refine`` run is rescheduled on the shared Docket queue (``AdmissionBlocked``: Docket acknowledges the old
   message and queues the same key again in one step), an MCP task gets its next leg queued (as ``tasks/update``
   does), and a free worker on another replica picks it up within a poll interval -- not after the Docket redelivery
   timeout or the lease's expiry. Steps still running at the deadline are cancelled and handed back the same way;
   their leases are released (each step's own ``finally``, then directly for any left).
4. **Exit 0.** A second signal skips what is left of the drain.

With the in-process queue (no ``REDRAFT_REDIS_URL``) there is no other replica: a handed-back run stays ``running``
in its table and the next start queues it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import uvicorn
from fastmcp.exceptions import ToolError
from fastmcp.server.middleware import Middleware, MiddlewareContext

from redraft.errors import DrainingError
from redraft.graph.leases import HELD
from redraft.server.middleware import error_text
from redraft.settings import Settings

log = logging.getLogger("redraft.drain")

POLL_S = 0.05
CANCEL_GRACE_S = 3.0  # after the deadline: how long cancelled steps get to release their leases themselves
HANDBACK_GRACE_S = 2.0  # after the last lease: how long background tasks get to hand their runs back
STDIO_EXIT_GRACE_S = 2.0  # after the drain over stdio: how long the server gets to close before the process ends
CUT: set[asyncio.Task] = set()  # tasks the drain cancelled at its deadline (their cancellation means "hand back")


def refusal() -> DrainingError:
    return DrainingError("The server is shutting down and takes no new calls; retry (another replica will answer).")


def handed_back(exc: BaseException) -> bool:
    """Whether ``exc`` stopped the current task for the drain: a step boundary's ``DrainingError``, or the drain's
    own cancellation at its deadline (then the cancellation is absorbed, so the task can hand its work back)."""
    if isinstance(exc, DrainingError):
        return True
    task = asyncio.current_task()
    if isinstance(exc, asyncio.CancelledError) and task in CUT:
        CUT.discard(task)
        task.uncancel()
        return True
    return False


def requeue_now() -> Exception:
    """For a Docket task body (``start_refine``'s run) that stopped for the drain: the exception that makes Docket
    acknowledge this delivery and queue the same task key again at once, for another worker."""
    from docket.dependencies import AdmissionBlocked, current_execution

    return AdmissionBlocked(current_execution.get(), "draining", retry_delay=timedelta(milliseconds=1))


async def requeue_task_leg(server) -> None:
    """For an MCP task body that stopped for the drain: queue the task's next leg (the same tool call again, as
    ``tasks/update`` does after an answer), so another worker continues the task; this leg then ends quietly. Mirrors
    ``fastmcp_tasks.handlers.tasks_update`` with the internals of the pinned fastmcp-tasks 4.1.4."""
    from fastmcp_tasks.context import get_task_context
    from fastmcp_tasks.creation import enqueue_task_leg, registered_component_for_key
    from fastmcp_tasks.handlers import _lookup_task, _task_key_ttl_seconds
    from fastmcp_tasks.input_store import (
        acquire_update_lock_blocking,
        load_task_args,
        release_update_lock,
        save_current_leg,
    )
    from fastmcp_tasks.keys import leg_execution_key, parse_task_key

    info, docket = get_task_context(), server._docket
    if info is None or docket is None:
        raise refusal()
    scope, task_id = info.task_scope, info.task_id
    if not await acquire_update_lock_blocking(docket, scope, task_id):
        raise refusal()
    try:
        _execution, base_key, leg, _created, _poll = await _lookup_task(docket, scope, task_id)
        component = await registered_component_for_key(server, parse_task_key(base_key)["component_identifier"])
        arguments = await load_task_args(docket, scope, task_id)
        next_key = leg_execution_key(base_key, leg + 1)
        await enqueue_task_leg(server, docket, component, arguments, next_key)
        await save_current_leg(docket, scope, task_id, next_key, leg + 1, _task_key_ttl_seconds(docket))
    finally:
        await release_update_lock(docket, scope, task_id)
    log.info("task %s handed to another worker (leg %d)", task_id, leg + 1)


class DrainMiddleware(Middleware):
    """While draining: a new tool call gets the retryable ``draining`` error; a call the drain cut at its deadline
    answers the same instead of vanishing."""

    def __init__(self, app) -> None:
        self.app = app

    async def on_call_tool(self, context: MiddlewareContext, call_next):
        if self.app.draining:
            raise ToolError(error_text(refusal()), log_level=logging.NOTSET)
        try:
            return await call_next(context)
        except asyncio.CancelledError as exc:
            if not handed_back(exc):
                raise
            cut = DrainingError("The server shut down before this call's step finished; nothing of that step was kept.")
            raise ToolError(error_text(cut), log_level=logging.NOTSET) from None


class Drain:
    """One server's drain: ``begin`` (synchronous, at the first signal), then ``run`` until it is done."""

    def __init__(self, mcp, settings: Settings) -> None:
        self.mcp, self.settings = mcp, settings
        self.started: float | None = None

    @property
    def app(self) -> Any:
        return (getattr(self.mcp, "_lifespan_result", None) or {}).get("redraft")

    def begin(self, reason: str) -> bool:
        """Stop taking work. False if a drain already began."""
        if self.started is not None:
            return False
        self.started = time.monotonic()
        app = self.app
        if app is not None:
            app.draining = True
            app.models.draining = True
        worker = getattr(self.mcp, "_worker", None)
        if worker is not None:
            worker.concurrency = 0  # no new task; the running ones are still renewed and finished
        log.info(
            "%s: draining (no new work; steps in flight get up to %.0f s, then their runs are handed back)",
            reason,
            self.settings.drain_seconds,
        )
        return True

    async def run(self) -> None:
        """Wait for the steps in flight (up to the deadline), cut what is left, release every lease, and give the
        background tasks a moment to hand their runs back."""
        if self.started is None:
            self.begin("drain")
        loop = asyncio.get_running_loop()

        def held() -> list[tuple[Any, Any, asyncio.Task]]:  # this server's leases (its event loop's steps)
            return [entry for entry in list(HELD.values()) if entry[2].get_loop() is loop and not entry[2].done()]

        await _wait_while(lambda: bool(held()), self.started + self.settings.drain_seconds)
        if held():
            log.warning("drain deadline: cutting %d step(s) still running; their runs are handed back", len(held()))
            for _db, _lease, task in held():
                CUT.add(task)
                task.cancel()
            await _wait_while(lambda: bool(held()), time.monotonic() + CANCEL_GRACE_S)
        for db, lease, _task in held():  # a step that did not let go: release its lease for it
            with contextlib.suppress(Exception):
                await db.release(lease)
        worker = getattr(self.mcp, "_worker", None)

        def running() -> list[asyncio.Task]:
            return [task for task in getattr(worker, "_tasks_by_key", {}).values() if not task.done()]

        await _wait_while(lambda: bool(running()), time.monotonic() + HANDBACK_GRACE_S)
        if running():  # a run holding no lease (say, a duplicate delivery waiting for its thread): hand it back too
            for task in running():
                CUT.add(task)
                task.cancel()
            await _wait_while(lambda: bool(running()), time.monotonic() + HANDBACK_GRACE_S)
        log.info("drained in %.1f s; exiting", time.monotonic() - self.started)


async def _wait_while(busy: Callable[[], bool], until: float) -> None:
    while time.monotonic() < until:
        if not busy():
            return
        await asyncio.sleep(POLL_S)


class DrainingServer(uvicorn.Server):
    """uvicorn, draining on the first SIGTERM/SIGINT before it shuts down (and then exiting 0, not re-raising the
    signal); a second signal shuts down at once."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame) -> None:
        if self._loop is None or self.drain.started is not None or self.should_exit:
            self.should_exit = True
            if self.drain.started is not None:
                self.force_exit = True
            return
        self._loop.call_soon_threadsafe(self._start_drain, signal.Signals(sig).name)

    def _start_drain(self, reason: str) -> None:
        if not self.drain.begin(reason):
            return
        self._drain_task = asyncio.ensure_future(self.drain.run())
        self._drain_task.add_done_callback(lambda _task: setattr(self, "should_exit", True))


async def serve_stdio(mcp, settings: Settings) -> None:
    """``mcp.run_stdio_async``, draining on SIGTERM/SIGINT before it stops (exit 0); a second signal stops at once."""
    drain = Drain(mcp, settings)
    loop = asyncio.get_running_loop()
    main = asyncio.ensure_future(mcp.run_stdio_async(show_banner=False))

    def stop(_task: asyncio.Future | None = None) -> None:
        main.cancel()
        # the transport reads stdin in a thread that no cancellation reaches: if the client keeps stdin open, the
        # server could not stop. Its runs and leases are handed back by now, so end the process if it lingers.
        loop.call_later(STDIO_EXIT_GRACE_S, _exit_now)

    def on_signal(sig: signal.Signals) -> None:
        if not drain.begin(sig.name):
            stop()
            return
        asyncio.ensure_future(drain.run()).add_done_callback(stop)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await main
    except asyncio.CancelledError:
        if drain.started is None:
            raise
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _exit_now() -> None:
    log.warning("stdio transport still waiting on stdin after the drain; exiting")
    logging.shutdown()
    os._exit(0)
