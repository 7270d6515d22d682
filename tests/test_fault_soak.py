"""Storage faults for real, during real load: a TCP proxy that stalls, cuts and slows the database, and
``pg_terminate_backend`` in a loop, during 20 concurrent sessions in one process and during a two-replica run.

Pass: no thread ever has two branches that no client asked for; every run_log keeps its invariants; every
interrupted run resumes to completion; every error a client saw while the faults ran is ``storage_error`` or
``lease_lost``."""

from __future__ import annotations

import asyncio
import random
import time

import psycopg
import pytest
from fastmcp.exceptions import ToolError

from redraft.errors import LeaseLostError, RedraftError, StorageError
from redraft.graph.checkpointer import open_persistence
from redraft.graph.runner import Runner, thread_id_for
from redraft.graph.state import check_invariants
from redraft.graph.timetravel import history, lineage
from tests.clients import PlainClient as Client
from tests.conftest import make_settings, new_thread
from tests.pgproxy import PgProxy
from tests.servers import HttpServer, server_env

pytestmark = pytest.mark.postgres
LOOPS = 3
NODES = ["start", "input", "draft"] + ["critique", "revise"] * LOOPS


def _terminate_backends(admin_url: str, db_url: str) -> int:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        return admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s AND pid <> "
            "pg_backend_pid()",
            (db_url.rsplit("/", 1)[1],),
        ).fetchone()[0]


async def _inject_faults(admin_url: str, db_url: str, proxies: list[PgProxy], seconds: float, seed: int) -> list:
    """Random faults for ``seconds``; returns what was done."""
    rng = random.Random(seed)
    done = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await asyncio.sleep(rng.uniform(0.15, 0.4))
        fault = rng.choice(["terminate", "cut", "stall", "slow"])
        proxy = rng.choice(proxies)
        if fault == "terminate":
            done.append((fault, await asyncio.to_thread(_terminate_backends, admin_url, db_url)))
        elif fault == "cut":
            proxy.cut()
            done.append((fault, proxy.port))
        else:
            hold = rng.uniform(0.3, 1.6)
            proxy.set_mode(fault, delay=0.05)
            await asyncio.sleep(hold)
            proxy.set_mode("pass")
            done.append((fault, round(hold, 2)))
    for proxy in proxies:
        proxy.set_mode("pass")
    return done


async def _check_thread(runner: Runner, thread: str) -> None:
    parents = await lineage(runner, thread)
    children = [p for p in parents.values() if p]
    assert len(children) == len(set(children)), f"{thread} forked by itself"
    check_invariants((await runner.snapshot(thread)).values)
    state = await runner.status(thread)
    assert state["phase"] == "done" and len(state["slot"]["revision"]) == LOOPS, state["phase"]
    entries = list(reversed((await history(runner, thread, limit=100))["checkpoints"]))
    nodes = [e["node"] for e in entries]
    assert nodes == NODES, [(e["source"], e["step"], e["node"]) for e in entries]


async def test_faults_during_twenty_concurrent_sessions(pg_url, pg_admin_url, stub):
    proxy = PgProxy.for_url(pg_url).start()
    try:
        stub.configure(changes=[30], latency_ms=60)
        settings = make_settings(
            proxy.url_for(pg_url), stub, lease_ttl_seconds=1.0, db_statement_timeout=1.5, db_pool_timeout=1.5
        )
        async with open_persistence(settings) as p:
            runner = Runner(p, settings)
            threads = [new_thread() for _ in range(20)]
            runs = [
                asyncio.create_task(runner.refine(t, "generic", f"Q{i}", max_loops=LOOPS, similarity_threshold=1.0))
                for i, t in enumerate(threads)
            ]
            faults = await _inject_faults(pg_admin_url, pg_url, [proxy], 4.0, seed=14)
            results = await asyncio.gather(*runs, return_exceptions=True)
            seen = [r for r in results if isinstance(r, BaseException)]
            assert faults and seen, "the faults must have interrupted some runs"
            for exc in seen:
                assert isinstance(exc, StorageError | LeaseLostError), repr(exc)
                assert exc.retryable and "postgresql://" not in exc.message
            for i, t in enumerate(threads):  # every interrupted run resumes to completion, on the same pool
                await _finish(runner, t, f"Q{i}")
                await _check_thread(runner, t)
    finally:
        proxy.stop()


async def _finish(runner: Runner, thread: str, query: str) -> None:
    """What a client does after an error: resume, or ask again if nothing of its run was committed."""
    for _ in range(100):
        try:
            status = await runner.status(thread)
            if status["phase"] == "done":
                return
            if status["phase"] == "empty" and not status["next"]:
                await runner.refine(thread, "generic", query, max_loops=LOOPS, similarity_threshold=1.0)
            else:
                await runner.resume(thread)
        except RedraftError as exc:  # the pool refilling, or a lease left by a failed release lapsing (its TTL)
            assert exc.retryable, repr(exc)
            await asyncio.sleep(0.2)
    raise AssertionError(f"{thread} did not finish")


async def test_faults_during_a_two_replica_run(pg_url, pg_admin_url, stub, tmp_path):
    proxies = [PgProxy.for_url(pg_url).start() for _ in range(2)]
    servers = []
    try:
        # 8 runs of 7 model calls, 250 ms each, outlast the first second of faults on any machine; at 60 ms a quiet
        # machine finished them all in 0.95 s, before the second fault, and the first (idle backends terminated)
        # is one the pool absorbs without an error
        stub.configure(changes=[30], latency_ms=250)
        for i, proxy in enumerate(proxies):
            env = server_env(
                proxy.url_for(pg_url),
                stub.base_url,
                REDRAFT_LEASE_TTL_SECONDS="1",
                REDRAFT_DB_STATEMENT_TIMEOUT="1.5",
                REDRAFT_DB_POOL_TIMEOUT="1.5",
            )
            servers.append(HttpServer(env, log=tmp_path / f"replica{i}.log").start())
        async with Client(servers[0].url) as a, Client(servers[1].url) as b:
            clients = [a, b]
            sessions = [(await a.call_tool("create_session", {})).structured_content["session_id"] for _ in range(8)]

            async def run(i: int, sid: str):
                args = {"session_id": sid, "query": f"Q{i}", "max_loops": LOOPS, "similarity_threshold": 1.0}
                return await clients[i % 2].call_tool("refine", args)

            runs = [asyncio.create_task(run(i, sid)) for i, sid in enumerate(sessions)]
            faults = await _inject_faults(pg_admin_url, pg_url, proxies, 4.0, seed=15)
            results = await asyncio.gather(*runs, return_exceptions=True)
            seen = [r for r in results if isinstance(r, BaseException)]
            assert faults and seen, "the faults must have interrupted some runs"
            for exc in seen:
                assert isinstance(exc, ToolError), repr(exc)
                assert str(exc).startswith(("storage_error:", "lease_lost:")), str(exc)
                assert str(exc).endswith("(retryable)") and "postgresql://" not in str(exc)
            for i, sid in enumerate(sessions):  # each resumed through the *other* replica
                other = clients[(i + 1) % 2]
                for _ in range(100):
                    try:
                        status = (await other.call_tool("status", {"session_id": sid})).structured_content
                        if status["phase"] == "done":
                            break
                        if status["phase"] == "empty" and not status["next"]:
                            await run(i + 1, sid)
                        else:
                            await other.call_tool("resume", {"session_id": sid})
                    except ToolError as exc:
                        assert "(retryable)" in str(exc), str(exc)
                        await asyncio.sleep(0.2)
        settings = make_settings(pg_url, stub)
        async with open_persistence(settings) as p:
            runner = Runner(p, settings)
            for sid in sessions:
                await _check_thread(runner, thread_id_for(sid, "generic"))
    finally:
        for server in servers:
            server.stop()
        for proxy in proxies:
            proxy.stop()
