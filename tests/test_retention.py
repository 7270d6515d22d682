"""Retention (issue 20 item 5): ``prune`` deletes old sessions, threads, checkpoints, finished run records and
stats in batches, skips threads with work under way, reports what it freed; ``redraft prune`` and the server's
sweep run the same pruning."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid

import pytest

from redraft.errors import InvalidInputError
from redraft.graph.checkpointer import open_persistence
from redraft.graph.retention import checkpoint_id_at, parse_age, prune
from redraft.graph.runner import Runner, thread_id_for
from redraft.graph.runs import RunStore
from redraft.server.app import create_server
from redraft.server.sessions import SessionStore
from tests.clients import PlainClient as Client
from tests.conftest import make_settings, new_thread
from tests.servers import REDRAFT, server_env


async def checkpoints(saver, thread_id: str) -> int:
    return len([c async for c in saver.alist({"configurable": {"thread_id": thread_id}})])


async def seed(runner, sessions: SessionStore) -> tuple[str, str]:
    """A session with a refined thread, and a refined thread of no session."""
    sid = (await sessions.create("anon"))["session_id"]
    await runner.refine(thread_id_for(sid, "generic"), "generic", "Explain MVCC.", max_loops=1)
    orphan = new_thread()
    await runner.refine(orphan, "generic", "Explain WAL.", max_loops=1)
    return sid, orphan


async def test_prune_frees_old_work_and_spares_new_and_busy_work(runner):
    p = runner.persistence
    db, saver = p.db, p.saver
    sessions = SessionStore(db, saver, 3600, 100)
    old_sid, old_orphan = await seed(runner, sessions)
    runs = RunStore(db)
    await runs.create(  # a finished run record of a session that is gone
        thread_id=thread_id_for(str(uuid.uuid4()), "generic"),
        session_id=str(uuid.uuid4()),
        companion="generic",
        principal="anon",
        status="succeeded",
    )
    await db.execute(
        "INSERT INTO redraft_stats (id, companion, kind, created_at) VALUES (?, 'generic', 'run', ?)",
        (uuid.uuid4().hex, time.time() - 1),
    )
    await asyncio.sleep(0.05)
    boundary = time.time()  # everything above is older than this; everything below is newer
    await asyncio.sleep(0.05)
    new_sid, new_orphan = await seed(runner, sessions)
    old_checkpoints = await checkpoints(saver, thread_id_for(old_sid, "generic")) + await checkpoints(saver, old_orphan)
    assert old_checkpoints > 4

    later = boundary + 100.0  # prune "older than 100 s" as seen 100 s after the boundary
    dry = await prune(db, saver, 100.0, dry_run=True, now=later)
    assert dry["cutoff"] == pytest.approx(boundary)
    assert (dry["sessions"], dry["threads"], dry["checkpoints"], dry["runs"], dry["stats"]) == (
        1,
        2,
        old_checkpoints,
        1,
        1,
    )
    assert dry["bytes"] > 0 or p.kind == "memory"
    assert await checkpoints(saver, old_orphan) > 0  # a dry run deletes nothing

    lease = await db.grant(old_orphan)  # a step is running on the old orphan thread: it must be left alone
    try:
        freed = await prune(db, saver, 100.0, now=later, batch_size=1)  # batches of one: pagination too
    finally:
        await db.release(lease)
    assert (freed["sessions"], freed["threads"], freed["skipped_busy"], freed["runs"], freed["stats"]) == (
        1,
        1,
        1,
        1,
        1,
    )
    assert await checkpoints(saver, thread_id_for(old_sid, "generic")) == 0
    assert await checkpoints(saver, old_orphan) > 0
    assert await db.fetchone("SELECT 1 AS x FROM redraft_sessions WHERE session_id = ?", (old_sid,)) is None

    again = await prune(db, saver, 100.0, now=later)  # the step is over: now the orphan goes
    assert (again["sessions"], again["threads"], again["skipped_busy"]) == (0, 1, 0)
    assert await checkpoints(saver, old_orphan) == 0
    # the new work is untouched
    assert await checkpoints(saver, thread_id_for(new_sid, "generic")) > 0
    assert await checkpoints(saver, new_orphan) > 0
    assert await sessions.touch("anon", new_sid) == new_sid


async def test_prune_leaves_a_thread_with_a_queued_run(runner):
    db, saver = runner.persistence.db, runner.persistence.saver
    thread = new_thread()
    await runner.refine(thread, "generic", "Explain B-trees.", max_loops=1)
    await RunStore(db).create(
        thread_id=thread,
        session_id=str(uuid.uuid4()),
        companion="generic",
        principal="anon",
    )
    freed = await prune(db, saver, 100.0, now=time.time() + 200.0)
    assert freed["threads"] == 0 and freed["skipped_busy"] == 1 and freed["runs"] == 0
    assert await checkpoints(saver, thread) > 0


def test_ages_and_checkpoint_ids():
    assert parse_age("30d") == 30 * 86400 and parse_age("12h") == 43200 and parse_age("90m") == 5400
    assert parse_age("45s") == 45 and parse_age("2w") == 14 * 86400 and parse_age("7") == 7 * 86400
    for bad in ("", "0d", "-3d", "3x", "d", "1e9"):
        with pytest.raises(InvalidInputError):
            parse_age(bad)
    from langgraph.checkpoint.base.id import uuid6

    before = checkpoint_id_at(time.time() - 0.01)
    made = str(uuid6(clock_seq=3))
    assert before < made < checkpoint_id_at(time.time() + 0.01)


async def cli(*args: str, env: dict[str, str], expect: int = 0) -> dict:
    proc = await asyncio.create_subprocess_exec(
        REDRAFT, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == expect, err.decode()
    return json.loads(out if expect == 0 else err)


async def test_redraft_prune_command(tmp_path, stub):
    db_file = str(tmp_path / "prune.sqlite")
    env = server_env(db_file, stub.base_url, REDRAFT_SESSION_TTL_SECONDS="1")  # expired, too, by the dry run
    settings = make_settings(db_file, stub)
    async with open_persistence(settings) as p:  # what `redraft run` leaves: a session and its thread
        await seed(Runner(p, settings), SessionStore(p.db, p.saver, 3600, 100))
    await asyncio.sleep(1.2)
    dry = await cli("prune", "--older-than", "1s", "--dry-run", "--json", env=env)
    assert dry["dry_run"] and dry["sessions"] == 1 and dry["threads"] == 2 and dry["checkpoints"] > 4
    with sqlite3.connect(db_file) as conn:  # a dry run deletes nothing, not even an expired session
        assert conn.execute("SELECT count(*) FROM redraft_sessions").fetchone()[0] == 1
    freed = await cli("prune", "--older-than", "1s", "--json", env=env)
    assert {k: freed[k] for k in ("sessions", "threads", "checkpoints")} == {
        k: dry[k] for k in ("sessions", "threads", "checkpoints")
    }
    with sqlite3.connect(tmp_path / "prune.sqlite") as conn:
        assert conn.execute("SELECT count(*) FROM redraft_sessions").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0] == 0
    bad = await cli("prune", "--older-than", "soon", "--json", env=env, expect=2)
    assert bad["error"] == "invalid_input" and "30d" in bad["message"]


async def test_prune_on_the_memory_backend(stub):
    settings = make_settings("memory", stub)
    async with open_persistence(settings) as p:
        runner = Runner(p, settings)
        sid, orphan = await seed(runner, SessionStore(p.db, p.saver, 3600, 100))
        freed = await prune(p.db, p.saver, 100.0, now=time.time() + 200.0)
        assert (freed["sessions"], freed["threads"], freed["skipped_busy"]) == (1, 2, 0) and freed["checkpoints"] > 4
        assert await checkpoints(p.saver, orphan) == 0
        assert await checkpoints(p.saver, thread_id_for(sid, "generic")) == 0


async def test_the_server_sweep_prunes(tmp_path, stub):
    db_url = str(tmp_path / "sweep.sqlite")  # prune itself is tested on PostgreSQL above
    settings = make_settings(db_url, stub)
    async with open_persistence(settings) as p:
        old = new_thread()
        await Runner(p, settings).refine(old, "generic", "Explain fsync.", max_loops=1)
    await asyncio.sleep(1.0)
    # retention of ~0.9 s: the thread above is older than that when the server's first sweep runs
    server = create_server(
        make_settings(db_url, stub, retention_days=0.9 / 86400, sweep_interval_seconds=0.2, session_ttl_seconds=60)
    )
    async with Client(server) as client:
        sid = (await client.call_tool("create_session", {})).structured_content["session_id"]
        await client.call_tool("refine", {"session_id": sid, "query": "Kept: in use."})
        async with open_persistence(settings) as p:
            for _ in range(50):
                if await checkpoints(p.saver, old) == 0:
                    break
                await asyncio.sleep(0.1)
            assert await checkpoints(p.saver, old) == 0
            assert await checkpoints(p.saver, thread_id_for(sid, "generic")) > 0
