"""The FastMCP application: lifespan (database, runner, session sweeper), auth, tools and resources.

Every request reads and writes the database; the process keeps clients and pools, never the truth, so any number of
``redraft serve`` processes can share one PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from fastmcp import FastMCP
from fastmcp.server.lifespan import lifespan

from redraft import __version__
from redraft.graph.bus import Bus, open_bus
from redraft.graph.checkpointer import open_persistence
from redraft.graph.companions import get_companion
from redraft.graph.database import SESSION_CHECK
from redraft.graph.runner import Runner, thread_id_for
from redraft.graph.runs import RunStore
from redraft.nodes.model import ModelProvider
from redraft.server.auth import build_auth
from redraft.server.drain import DrainMiddleware
from redraft.server.middleware import LearningMiddleware, ObservabilityMiddleware, SessionActivityMiddleware
from redraft.server.sessions import SessionStore, principal_key
from redraft.server.stats import StatsStore
from redraft.server.tasks import tasks_extension
from redraft.settings import Settings, get_settings

log = logging.getLogger("redraft.server")

INSTRUCTIONS = """\
redraft refines answers with a draft -> critique -> revise loop and keeps every step in durable checkpoints.
Call create_session first and pass its session_id to every other tool. Each companion type (see `companions`) has
its own thread in the session. Use `refine` to run a query to convergence, or draft/critique/revise to step by hand.
"""


@dataclass
class AppState:
    settings: Settings
    models: ModelProvider
    runner: Runner | None = None
    sessions: SessionStore | None = None
    stats: StatsStore | None = None
    runs: RunStore | None = None  # background runs (graph/runs.py): start_refine's and MCP tasks'
    bus: Bus | None = None  # their progress events (graph/bus.py): in-process, or Redis with REDRAFT_REDIS_URL
    draining: bool = False  # set on SIGTERM/SIGINT (server/drain.py): /readyz answers 503, new calls are refused

    async def thread(self, session_id: str, companion: str) -> str:
        """Validate the companion and the caller's session (recording the access); return the thread id."""
        get_companion(companion, self.settings.companions)
        session_id = await self.sessions.touch(principal_key(), session_id)
        return thread_id_for(session_id, companion)

    @contextlib.contextmanager
    def stepping(self, session_id: str, companion: str) -> Iterator[str]:
        """``thread`` for a call whose step takes the thread's lease (draft, critique, revise): the session is checked,
        and its access recorded, in the lease grant's own statement (graph/database.py ``SessionCheck``) instead of
        a read before it. A call refused before its step starts (invalid input) checks no session."""
        get_companion(companion, self.settings.companions)
        check = self.sessions.check(principal_key(), session_id)
        token = SESSION_CHECK.set(check)
        try:
            yield thread_id_for(check.session_id, companion)
        finally:
            SESSION_CHECK.reset(token)


# _GC_NOTE: while serving, everything alive after start-up (modules, classes, schemas, compiled graphs: ~250,000
# objects) is frozen out of the garbage collector's reach. Otherwise every full collection walks them all again, 150 to
# 400 ms on a loaded 2-core machine with the GIL held, and the event loop serves no one meanwhile, whichever thread
# triggered it. Unfrozen at shutdown, so a process that builds many servers (the tests) can still reclaim their cycles.


def create_server(settings: Settings | None = None, models: ModelProvider | None = None) -> FastMCP:
    settings = settings or get_settings()
    state = AppState(settings=settings, models=models or ModelProvider(settings))

    @lifespan
    async def backend(server: FastMCP):
        async with open_persistence(settings) as persistence:
            state.runner = Runner(persistence, settings, state.models)
            state.sessions = SessionStore(
                persistence.db, persistence.saver, settings.session_ttl_seconds, settings.max_sessions
            )
            state.stats = StatsStore(persistence.db)
            state.runs = RunStore(persistence.db)
            state.bus = open_bus(settings.redis_url)
            await _serve_input_schemas(server)
            sweeper = asyncio.create_task(_sweep_forever(state))
            gc.freeze()  # see _GC_NOTE
            try:
                yield {"redraft": state}
            finally:
                gc.unfreeze()
                sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper
                await state.bus.close()

    mcp = FastMCP(
        "redraft",
        instructions=INSTRUCTIONS,
        version=__version__,
        auth=build_auth(settings),
        lifespan=backend,
        mask_error_details=True,
        # FastMCP's default rewrites every tool schema's $refs on every tools/list -- and the 2026-07-28 transport
        # lists tools on every call. Our schemas are valid JSON Schema with local $defs, which clients resolve.
        dereference_schemas=False,
        middleware=[
            ObservabilityMiddleware(),  # outermost: every call is counted and logged, a draining refusal too
            DrainMiddleware(state),  # while draining, new calls get the retryable `draining` error (server/drain.py)
            SessionActivityMiddleware(state),
            LearningMiddleware(state),
        ],
    )
    # MCP background tasks: refine, resume and replay run as tasks for clients that ask (server/tasks.py)
    mcp.add_extension(tasks_extension(settings))
    from redraft.server.ops import register_ops
    from redraft.server.prompts import register_prompts
    from redraft.server.resources import register_resources
    from redraft.server.runs import register_runs
    from redraft.server.timetravel import register_timetravel
    from redraft.server.tools import register_tools

    register_tools(mcp, state)
    register_resources(mcp, state)
    register_timetravel(mcp, state)
    register_runs(mcp, state)
    register_prompts(mcp, state)  # one MCP prompt per companion (server/prompts.py)
    register_ops(mcp, state)  # /healthz, /readyz, /metrics over HTTP (server/ops.py)
    from redraft.server.viewer import register_viewer

    register_viewer(mcp, state)  # the time-travel viewer at /ui over HTTP (server/viewer/)
    return mcp


async def _serve_input_schemas(mcp: FastMCP) -> None:
    """Give the MCP SDK a direct lookup of each tool's input schema. Without one, the 2026-07-28 transport checks
    the ``Mcp-Param-*`` headers of every ``tools/call`` by running a whole ``tools/list`` through the server first
    (~0.8 ms a call). redraft's tool set is fixed at start-up and the same for every principal, so one listing
    made here is exactly what every caller is advertised."""
    schemas = {t.name: t.to_mcp_tool(name=t.name).input_schema for t in await mcp.list_tools(run_middleware=False)}
    mcp._mcp_server.get_tool_input_schema = schemas.get


async def _sweep_forever(state: AppState) -> None:
    from redraft.graph.retention import Pruner, freed_summary

    # retention (REDRAFT_RETENTION_DAYS): the same pruning as `redraft prune`, at most hourly
    pruner = Pruner(state.sessions.db, state.sessions.saver, state.settings.retention_days)
    while True:
        await asyncio.sleep(state.settings.sweep_interval_seconds)
        try:
            expired = await state.sessions.sweep()
            if expired:
                log.info("expired %d idle sessions", expired)
            freed = await pruner.maybe()
            if freed and (freed["threads"] or freed["runs"] or freed["stats"] or freed["sessions"]):
                log.info("retention: %s", freed_summary(freed))
        except Exception:
            log.warning("session sweep failed; will retry", exc_info=True)
