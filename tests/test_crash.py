"""Crash resume: SIGKILL a real `redraft serve` in the middle of refine, restart it, resume -- several times in a row.
No completed step may be repeated or lost."""

from __future__ import annotations

import asyncio
import collections

import pytest
from fastmcp.exceptions import ToolError

from redraft.graph.checkpointer import open_persistence
from redraft.graph.runner import Runner, thread_id_for
from redraft.graph.state import check_invariants
from redraft.graph.timetravel import history
from tests.clients import PlainClient as Client
from tests.conftest import make_settings
from tests.servers import HttpServer, server_env

MAX_LOOPS = 6
STEPS = 1 + 2 * MAX_LOOPS


def killer(server: HttpServer, kill_after: int):
    """A progress handler that SIGKILLs the server after `kill_after` notifications, and the event it sets."""
    seen = 0
    killed = asyncio.Event()

    async def on_progress(value, total, message):
        nonlocal seen
        seen += 1
        if seen == kill_after:
            await asyncio.sleep(0.05)  # into the next step's model call
            server.kill()
            killed.set()

    return on_progress, killed


async def _run_until_killed(server: HttpServer, tool: str, args: dict, kill_after: int) -> None:
    """Call `tool` and SIGKILL the server after `kill_after` progress notifications."""
    on_progress, killed = killer(server, kill_after)
    async with Client(server.url, timeout=60) as client:
        with pytest.raises(Exception):  # noqa: B017 - the connection dies with the server
            await client.call_tool(tool, args, progress_handler=on_progress)
    assert killed.is_set()


async def _resume_when_lease_lapses(url: str, args: dict, **kw):
    async with Client(url, timeout=60) as client:
        for _ in range(100):
            try:
                return await client.call_tool("resume", args, **kw)
            except ToolError as exc:
                if "conflict" not in str(exc):
                    raise
                await asyncio.sleep(0.2)  # the dead server's lease has not lapsed yet
    raise AssertionError("the lease never lapsed")


@pytest.mark.postgres
async def test_sigkill_mid_refine_then_resume_several_times(pg_url, stub):
    stub.configure(changes=[30], latency_ms=150)
    env = server_env(pg_url, stub.base_url, REDRAFT_LEASE_TTL_SECONDS="1")
    server = HttpServer(env).start()
    try:
        async with Client(server.url) as client:
            sid = (await client.call_tool("create_session", {})).structured_content["session_id"]
        args = {"session_id": sid, "query": "Survive crashes.", "max_loops": MAX_LOOPS, "similarity_threshold": 1.0}
        kills = 0
        await _run_until_killed(server, "refine", args, kill_after=2)
        kills += 1
        for kill_after in (3, 2):  # crash again during each of the next resumes
            server = HttpServer(env, port=server.port).start()
            await _run_until_killed_on_resume(server, sid, kill_after)
            kills += 1
        server = HttpServer(env, port=server.port).start()
        final = (await _resume_when_lease_lapses(server.url, {"session_id": sid})).structured_content
    finally:
        server.stop()
    assert final["stop_reason"] == "max_loops" and final["phase"] == "done"
    assert len(final["slot"]["critique"]) == len(final["slot"]["revision"]) == MAX_LOOPS

    # nothing lost: every step is in the thread; nothing done twice: one linear branch, one checkpoint per step
    settings = make_settings(pg_url, stub)
    async with open_persistence(settings) as p:
        runner = Runner(p, settings)
        thread = thread_id_for(sid, "generic")
        check_invariants((await runner.snapshot(thread)).values)
        entries = (await history(runner, thread, limit=200))["checkpoints"]
    nodes = [e["node"] for e in reversed(entries)]
    assert nodes == ["start", "input", "draft"] + ["critique", "revise"] * MAX_LOOPS
    assert len({e["branch"] for e in entries}) == 1
    # the model was asked again only for the step each crash interrupted
    per_step = collections.Counter((r["node"], r["messages"][-1]["content"][-200:]) for r in stub.requests)
    assert len(stub.requests) <= STEPS + kills
    assert sum(n - 1 for n in per_step.values()) <= kills


async def _run_until_killed_on_resume(server: HttpServer, sid: str, kill_after: int) -> None:
    on_progress, killed = killer(server, kill_after)

    with pytest.raises(Exception):  # noqa: B017 - the connection dies with the server
        await _resume_when_lease_lapses(server.url, {"session_id": sid}, progress_handler=on_progress)
    assert killed.is_set()
