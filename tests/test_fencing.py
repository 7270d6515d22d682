"""Fenced leases: a step that lost its lease commits nothing, a replica cut off from the database aborts its own step
before another may take over, and database stalls end in clear, retryable errors within the configured time."""

from __future__ import annotations

import asyncio
import time

import pytest

from redraft.errors import ConflictError, LeaseLostError, StorageError
from redraft.graph.checkpointer import open_persistence
from redraft.graph.runner import Runner
from redraft.graph.state import check_invariants
from redraft.graph.timetravel import history, lineage
from tests.conftest import make_settings, new_thread
from tests.pgproxy import PgProxy


async def _until(predicate, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def _one_linear_branch(runner: Runner, thread: str) -> None:
    parents = await lineage(runner, thread)
    children = [p for p in parents.values() if p]
    assert len(children) == len(set(children)), "a checkpoint has two children: the thread forked by itself"
    check_invariants((await runner.snapshot(thread)).values)


async def _pending_writes_of(runner: Runner, thread: str) -> list:
    return [w for t in [await runner.persistence.saver.aget_tuple(runner.config(thread))] for w in t.pending_writes]


async def test_a_step_that_lost_its_lease_commits_nothing(db_url, stub):
    """Replica A's lease lapses while it waits on the model (as after a long database outage); replica B takes the
    thread over and commits. When A's model call returns, its write is refused in the write's own transaction."""
    settings = make_settings(db_url, stub, lease_ttl_seconds=30)  # no heartbeat during the test: only the fence acts
    async with open_persistence(settings) as pa, open_persistence(settings) as pb:
        a, b = Runner(pa, settings), Runner(pb, settings)
        thread = new_thread()
        await a.draft(thread, "generic", "Fence me.")
        stub.configure(latency_ms=1500)
        run_a = asyncio.create_task(a.critique(thread))
        await _until(lambda: len(stub.prompts("critique")) == 1)
        with pytest.raises(ConflictError):  # A's lease is live: B is refused
            await b.critique(thread)
        await pb.db.execute("UPDATE redraft_leases SET expires_at = 0 WHERE thread_id = ?", (thread,))  # it lapses
        stub.configure(latency_ms=0)
        done_b = await b.critique(thread)
        with pytest.raises(LeaseLostError) as lost:
            await run_a
        assert lost.value.retryable and lost.value.code == "lease_lost"
        state = await b.status(thread)
        assert state["slot"]["critique"] == done_b["slot"]["critique"] and len(state["slot"]["critique"]) == 1
        await _one_linear_branch(b, thread)
        # the thread goes on normally from B's commit
        after = await a.revise(thread)
        assert after["phase"] == "ready_to_critique" and len(after["slot"]["revision"]) == 1
        await _one_linear_branch(a, thread)


async def test_tokens_strictly_increase_across_replicas(db_url, stub):
    settings = make_settings(db_url, stub)
    async with open_persistence(settings) as pa, open_persistence(settings) as pb:
        tokens = []
        for db in (pa.db, pb.db, pa.db, pb.db):
            for thread in ("x:generic", "y:generic"):
                async with db.thread_lock(thread) as lease:
                    tokens.append(lease.token)
        assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)


@pytest.mark.postgres
async def test_a_replica_cut_off_from_the_database_aborts_before_another_takes_over(pg_url, stub):
    """The database stalls for replica A (packets held, no reset) while A waits on a model call. A cannot renew its
    lease, so it cancels its own step (model call included) before the lease expires: lease_lost. Replica B then
    takes the thread over and finishes it; when A's network comes back nothing of A's lands."""
    proxy = PgProxy.for_url(pg_url).start()
    try:
        ttl = 1.5
        settings_a = make_settings(proxy.url_for(pg_url), stub, lease_ttl_seconds=ttl, db_statement_timeout=2)
        settings_b = make_settings(pg_url, stub, lease_ttl_seconds=ttl)
        async with open_persistence(settings_a) as pa, open_persistence(settings_b) as pb:
            a, b = Runner(pa, settings_a), Runner(pb, settings_b)
            thread = new_thread()
            await a.draft(thread, "generic", "Cut me off.", max_loops=2, similarity_threshold=1.0)
            stub.configure(latency_ms=6000)
            run_a = asyncio.create_task(a.refine(thread, "generic"))
            await _until(lambda: len(stub.prompts("critique")) == 1)
            proxy.set_mode("stall")
            # B tries to take the thread over from the moment A is cut off; by the time it can, A has given up
            while True:
                try:
                    async with pb.db.thread_lock(thread):
                        assert run_a.done(), "B took the lease over while A's step was still running"
                        break
                except ConflictError:
                    await asyncio.sleep(0.02)
            with pytest.raises(LeaseLostError):
                await run_a
            stub.configure(latency_ms=0)
            done = await b.resume(thread)
            assert done["phase"] == "done" and len(done["slot"]["revision"]) == 2
            proxy.set_mode("pass")  # whatever A still held in flight now reaches the database
            await asyncio.sleep(0.5)
            await _one_linear_branch(b, thread)
            state = await b.status(thread)
            assert len(state["slot"]["critique"]) == 2 and state["phase"] == "done"
    finally:
        proxy.stop()


@pytest.mark.postgres
async def test_stalls_and_resets_are_retryable_storage_errors_and_the_pool_recovers(pg_url, stub):
    proxy = PgProxy.for_url(pg_url).start()
    try:
        timeout = 1.0
        settings = make_settings(proxy.url_for(pg_url), stub, db_statement_timeout=timeout, db_pool_timeout=1.0)
        async with open_persistence(settings) as p:
            runner = Runner(p, settings)
            thread = new_thread()
            await runner.draft(thread, "generic", "Stall me.")
            proxy.set_mode("stall")
            for call in (
                lambda: p.db.fetchall("SELECT count(*) AS n FROM redraft_sessions"),  # redraft's own tables
                lambda: runner.status(thread),  # checkpoint reads
                lambda: runner.critique(thread),  # lease grant
            ):
                started = time.monotonic()
                with pytest.raises(StorageError) as err:
                    await call()
                assert err.value.retryable
                assert time.monotonic() - started < timeout + 2.5, "a stalled call must end near its timeout"
            proxy.set_mode("pass")
            proxy.cut()  # and every connection is reset
            # no restart: the first request after recovery succeeds
            assert (await runner.status(thread))["phase"] == "ready_to_critique"
            assert (await runner.critique(thread))["phase"] == "needs_revision"
            await _one_linear_branch(runner, thread)
            assert [e["node"] for e in (await history(runner, thread))["checkpoints"]][:1] == ["critique"]
    finally:
        proxy.stop()


@pytest.mark.postgres
async def test_a_read_only_database_is_a_retryable_storage_error_on_every_table(pg_url, pg_admin_url, stub):
    import psycopg

    from redraft.server.sessions import SessionStore

    name = pg_url.rsplit("/", 1)[1]

    def admin(sql: str) -> None:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(sql)
            conn.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        time.sleep(0.5)  # the pool sees its connections closed (their sockets turn readable) and replaces them

    settings = make_settings(pg_url, stub)
    async with open_persistence(settings) as p:
        runner, store = Runner(p, settings), SessionStore(p.db, p.saver, 600, 100)
        thread = new_thread()
        await runner.draft(thread, "generic", "Read only.")
        await asyncio.to_thread(admin, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        for call in (lambda: store.create("anon"), lambda: runner.critique(thread)):  # own tables, checkpoints
            with pytest.raises(StorageError) as err:
                await call()
            assert err.value.retryable and "ReadOnly" in err.value.message
        await asyncio.to_thread(admin, f'ALTER DATABASE "{name}" SET default_transaction_read_only = off')
        await store.create("anon")
        assert (await runner.critique(thread))["phase"] == "needs_revision"
