"""Model and database faults: retries where sensible, then clear errors; the thread never changes half-way."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from fastmcp.exceptions import ToolError

from redraft.errors import LeaseLostError, ModelError, StorageError
from redraft.graph.checkpointer import open_persistence
from redraft.graph.runner import Runner
from redraft.graph.state import check_invariants
from redraft.graph.timetravel import history
from redraft.server.app import create_server
from tests.clients import PlainClient as Client
from tests.conftest import make_settings, new_thread, runner_with


async def _snapshot_key(runner, thread):
    snap = await runner.snapshot(thread)
    return snap.config["configurable"].get("checkpoint_id"), snap.values


async def test_transient_429_and_500_are_retried(db_url, stub):
    settings = make_settings(db_url, stub, max_retries=2)
    async with open_persistence(settings) as p:
        runner = Runner(p, settings)
        thread = new_thread()
        await runner.draft(thread, "generic", "Retry me.")
        stub.fail({"status": 429, "retry_after": 0, "node": "critique"}, {"status": 500, "node": "critique"})
        state = await runner.critique(thread)
    assert state["phase"] == "needs_revision"
    assert [r["node"] for r in stub.requests] == ["draft", "critique", "critique", "critique"]


@pytest.mark.parametrize(
    ("fault", "attempts", "message"),
    [  # attempts: what the client makes with max_retries=1 (it retries 429, 5xx and timeouts, not the others)
        ({"status": 429, "retry_after": 0}, 2, "rate-limiting"),
        ({"status": 500}, 2, "HTTP 500"),
        ({"sleep": 2.0}, 2, "timed out"),
        ({"malformed": True}, 1, "malformed response"),
        ({"empty": True}, 1, "empty content"),
        ({"status": 401}, 1, "rejected the API key"),
    ],
)
async def test_model_faults_are_clear_errors_and_change_nothing(tmp_path, stub, fault, attempts, message):
    settings = make_settings(str(tmp_path / "f.sqlite"), stub, max_retries=1, request_timeout=0.5)
    async with Client(create_server(settings)) as client:
        sid = (await client.call_tool("create_session", {})).structured_content["session_id"]
        await client.call_tool("draft", {"session_id": sid, "query": "Fault me."})
        before = (await client.call_tool("status", {"session_id": sid})).structured_content
        stub.fail(*[{**fault, "node": "critique"}] * attempts)
        with pytest.raises(ToolError, match=rf"^model_error: .*{message}"):
            await client.call_tool("critique", {"session_id": sid})
        after = (await client.call_tool("status", {"session_id": sid})).structured_content
        assert after["slot"] == before["slot"] and after["phase"] == "ready_to_critique"
        assert after["similarities"] == before["similarities"]
        assert len(stub.prompts("critique")) == attempts
        r = await client.call_tool("critique", {"session_id": sid})  # the fault has passed: the step just works
        assert r.structured_content["phase"] == "needs_revision"


async def test_fault_mid_refine_keeps_completed_steps_and_resumes(db_url, stub):
    settings = make_settings(db_url, stub, max_retries=0)
    async with open_persistence(settings) as p:
        runner = Runner(p, settings)
        thread = new_thread()
        stub.configure(changes=[30])
        stub.fail({"status": 500, "node": "revise"})  # the first revision fails
        with pytest.raises(ModelError, match="HTTP 500"):
            await runner.refine(thread, "generic", "Fail then resume.", max_loops=3, similarity_threshold=1.0)
        state = await runner.status(thread)
        assert state["phase"] == "needs_revision" and state["next"] == ["revise"]
        assert len(state["slot"]["critique"]) == 1 and state["slot"]["revision"] == []
        done = await runner.resume(thread)
        assert done["stop_reason"] == "max_loops" and len(done["slot"]["revision"]) == 3
        nodes = [e["node"] for e in reversed((await history(runner, thread, limit=100))["checkpoints"])]
        assert nodes == ["start", "input", "draft"] + ["critique", "revise"] * 3


@pytest.mark.postgres
async def test_killed_postgres_connections_fail_clearly_and_the_pool_recovers(pg_url, pg_admin_url, stub):
    stub.configure(changes=[30], latency_ms=120)
    settings = make_settings(pg_url, stub, lease_ttl_seconds=1.0)
    async with open_persistence(settings) as p:
        runner = Runner(p, settings)
        threads = [new_thread() for _ in range(6)]
        runs = [
            asyncio.create_task(runner.refine(t, "generic", f"Q{i}", max_loops=4, similarity_threshold=1.0))
            for i, t in enumerate(threads)
        ]
        killed = 0
        for _ in range(3):  # kill every backend of the database, three times during the run
            await asyncio.sleep(0.4)
            with psycopg.connect(pg_admin_url, autocommit=True) as admin:
                killed += admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s",
                    (pg_url.rsplit("/", 1)[1],),
                ).fetchone()[0]
        results = await asyncio.gather(*runs, return_exceptions=True)
        assert killed > 0
        errors = [r for r in results if isinstance(r, Exception)]
        for exc in errors:  # only clear, retryable storage errors -- never a driver exception or a model error
            # (a step whose lease heartbeat could not get through in time gives up: lease_lost)
            assert isinstance(exc, StorageError | LeaseLostError) and exc.retryable, repr(exc)
            assert "postgresql://" not in exc.message
        # the same pool, no restart: every thread reads back intact and finishes
        for i, t in enumerate(threads):
            check_invariants((await runner.snapshot(t)).values)
            for _ in range(50):
                state = await runner.status(t)
                if state["phase"] == "done":
                    break
                try:  # what a client does (README, Failure model): resume, or ask again if nothing was committed
                    if state["phase"] == "empty" and not state["next"]:
                        await runner.refine(t, "generic", f"Q{i}", max_loops=4, similarity_threshold=1.0)
                    else:
                        await runner.resume(t)
                except Exception as exc:
                    assert getattr(exc, "retryable", False), repr(exc)
                    await asyncio.sleep(0.3)
            assert state["phase"] == "done" and len(state["slot"]["revision"]) == 4
            nodes = [e["node"] for e in reversed((await history(runner, t, limit=100))["checkpoints"])]
            assert nodes == ["start", "input", "draft"] + ["critique", "revise"] * 4


async def test_a_step_cancelled_mid_write_leaves_sqlite_writable(tmp_path, stub):
    """Cancelling a step (a cancelled run, a lost lease, a shutdown) while the SQLite saver is between its write and
    its commit, or redraft's own tables mid-transaction, must not leave a transaction open: it would hold the file's
    write lock, and every other write (a run's claim, a lease, another process) would wait out the busy timeout."""
    import random
    import sqlite3

    path = tmp_path / "c.sqlite"

    def writable() -> None:  # another connection takes the write lock at once, or fails
        probe = sqlite3.connect(path, timeout=0.5, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
        finally:
            probe.close()

    async with runner_with(str(path), stub) as runner:
        db = runner.persistence.db
        rng = random.Random(7)
        for trial in range(40):
            task = asyncio.create_task(
                runner.refine(new_thread(), "generic", f"Cancel me {trial}.", max_loops=3, similarity_threshold=1.0)
            )
            await asyncio.sleep(rng.uniform(0.0, 0.04))
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await asyncio.to_thread(writable)
        for trial in range(20):  # a transaction on redraft's own tables (ending a session), cut at each await
            ids = [new_thread() for _ in range(3)]
            retiring = asyncio.create_task(db.retire(ids))
            for _ in range(trial % 6):
                await asyncio.sleep(0)
            retiring.cancel()
            await asyncio.gather(retiring, return_exceptions=True)
            await asyncio.to_thread(writable)
