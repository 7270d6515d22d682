"""Crash consistency: SIGKILL the server at random points across 20 runs (PostgreSQL and SQLite alternating).
Afterwards every thread satisfies the run_log invariants and resumes to completion."""

from __future__ import annotations

import asyncio
import random

import pytest

from redraft.errors import ConflictError
from redraft.graph.checkpointer import open_persistence
from redraft.graph.runner import Runner, thread_id_for
from redraft.graph.state import check_invariants
from redraft.graph.timetravel import history
from tests.clients import PlainClient as Client
from tests.conftest import make_settings
from tests.servers import HttpServer, server_env

RUNS = 20
LOOPS = 3


@pytest.mark.postgres
@pytest.mark.timeout(480)  # 20 server starts and kills: minutes on a loaded 2-core machine
async def test_random_sigkills_leave_consistent_resumable_threads(pg_url, tmp_path, stub):
    stub.configure(changes=[30], latency_ms=40)
    rng = random.Random(20261124)
    databases = [pg_url, str(tmp_path / "crash.sqlite")]
    sessions: dict[str, list[str]] = {db: [] for db in databases}
    for run in range(RUNS):
        db = databases[run % 2]
        server = HttpServer(server_env(db, stub.base_url, REDRAFT_LEASE_TTL_SECONDS="1")).start()
        sids: list[str] = []
        try:
            async with Client(server.url, timeout=30) as client:
                sids = [(await client.call_tool("create_session", {})).structured_content["session_id"] for _ in "ab"]
                args = {"query": f"Run {run}.", "max_loops": LOOPS, "similarity_threshold": 1.0}
                calls = [asyncio.create_task(client.call_tool("refine", {"session_id": s, **args})) for s in sids]
                await asyncio.sleep(rng.uniform(0.02, 0.6))
                server.kill()
                await asyncio.gather(*calls, return_exceptions=True)
        except Exception:
            assert len(sids) == 2
        finally:
            server.kill()
        sessions[db] += sids

    finished_before_resume = 0
    for db in databases:
        settings = make_settings(db, stub)
        async with open_persistence(settings) as p:
            runner = Runner(p, settings)
            for sid in sessions[db]:
                thread = thread_id_for(sid, "generic")
                state = (await runner.snapshot(thread)).values
                check_invariants(state)
                status = await runner.status(thread)
                if status["phase"] == "empty":
                    continue  # killed before the query's first checkpoint: nothing was started, nothing to lose
                finished_before_resume += status["phase"] == "done"
                for _ in range(60):
                    if status["phase"] == "done":
                        break
                    try:
                        status = await runner.resume(thread)
                    except ConflictError:
                        await asyncio.sleep(0.25)  # the killed server's lease lapses after 1 s
                assert status["phase"] == "done" and len(status["slot"]["revision"]) == LOOPS, status["phase"]
                nodes = [e["node"] for e in reversed((await history(runner, thread, limit=100))["checkpoints"])]
                assert nodes == ["start", "input", "draft"] + ["critique", "revise"] * LOOPS  # no step done twice
    assert finished_before_resume < 2 * RUNS  # the kills really interrupted runs
