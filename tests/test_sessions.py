"""Session lifecycle (TTL, sweeps, listing) and the learning middleware's durable stats."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid

import psycopg
import pytest
from fastmcp.exceptions import ToolError

from redraft.errors import ConflictError
from redraft.graph.runner import thread_id_for
from redraft.server.app import create_server
from tests.clients import PlainClient as Client
from tests.conftest import make_settings


def sql_value(db_url: str, sql: str, params: tuple):
    """Run one statement on the test database (committed); the first column of its first row, if it returns rows."""
    if db_url.startswith("postgresql"):
        with psycopg.connect(db_url) as conn:
            cur = conn.execute(sql.replace("?", "%s"), params)
            return cur.fetchone()[0] if cur.description else None
    with sqlite3.connect(db_url) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchone()[0] if cur.description else None


async def test_idle_sessions_expire_and_the_sweep_deletes_their_checkpoints(db_url, stub):
    # timings with room for a loaded 2-core CI machine: each sleep is well inside or well past the TTL
    server = create_server(make_settings(db_url, stub, session_ttl_seconds=2.5, sweep_interval_seconds=0.3))
    async with Client(server) as client:
        sid = (await client.call_tool("create_session", {})).structured_content["session_id"]
        await client.call_tool("refine", {"session_id": sid, "query": "Short-lived."})
        thread = thread_id_for(sid, "generic")
        assert sql_value(db_url, "SELECT count(*) FROM checkpoints WHERE thread_id = ?", (thread,)) > 0
        await asyncio.sleep(1.5)
        await client.call_tool("status", {"session_id": sid})  # an access renews the TTL
        await asyncio.sleep(1.5)
        listed = (await client.call_tool("list_sessions", {})).structured_content["sessions"]
        assert [s["session_id"] for s in listed] == [sid]
        await asyncio.sleep(3.5)  # idle past the TTL: the periodic sweep removes everything
        with pytest.raises(ToolError, match="invalid_session"):
            await client.call_tool("status", {"session_id": sid})
        assert sql_value(db_url, "SELECT count(*) FROM checkpoints WHERE thread_id = ?", (thread,)) == 0
        assert sql_value(db_url, "SELECT count(*) FROM redraft_sessions WHERE session_id = ?", (sid,)) == 0


async def test_opportunistic_sweep_past_max_sessions(db_url, stub):
    settings = make_settings(db_url, stub, session_ttl_seconds=0.5, sweep_interval_seconds=3600, max_sessions=2)
    async with Client(create_server(settings)) as client:
        old = [(await client.call_tool("create_session", {})).structured_content["session_id"] for _ in range(2)]
        await asyncio.sleep(0.7)
        new = (await client.call_tool("create_session", {})).structured_content["session_id"]
    for sid in old:
        assert sql_value(db_url, "SELECT count(*) FROM redraft_sessions WHERE session_id = ?", (sid,)) == 0
    assert sql_value(db_url, "SELECT count(*) FROM redraft_sessions WHERE session_id = ?", (new,)) == 1


async def test_learning_stats_are_durable_and_honest(db_url, stub):
    stub.configure(changes=[12, 8, 4, 0])  # similarities 0.96, 0.973: `code` (threshold 0.97) converges at 2
    settings = make_settings(db_url, stub)
    async with Client(create_server(settings)) as client:
        empty = json.loads((await client.read_resource("redraft://stats/code"))[0].text)
        assert empty["runs"] == 0 and empty["suggestions"] is None and "Not enough data" in empty["note"]
        for i in range(3):
            sid = (await client.call_tool("create_session", {})).structured_content["session_id"]
            r = await client.call_tool("refine", {"session_id": sid, "query": f"Q{i}", "companion": "code"})
            runs_before = r.structured_content["suggestions"]["runs"]
            assert runs_before == i  # the result carries what was known before this run
        with pytest.raises(Exception, match="unknown_companion"):
            await client.read_resource("redraft://stats/poet")
    # a new server process on the same database sees the same numbers
    async with Client(create_server(settings)) as client:
        stats = json.loads((await client.read_resource("redraft://stats/code"))[0].text)
        sid = (await client.call_tool("create_session", {})).structured_content["session_id"]
        status = await client.call_tool("status", {"session_id": sid, "companion": "code"})
    assert stats["runs"] == 3 and stats["stop_reasons"] == {"converged": 3}
    sug = stats["suggestions"]
    assert sug["typical_iterations"] == 2
    assert sug["recommended_threshold"] == pytest.approx(0.9733, abs=1e-4)
    assert sug["estimated_completion_s"] > 0
    assert stats["transition_seconds"]["refine->done"]["count"] == 3
    assert status.structured_content["suggestions"]["typical_iterations"] == 2


async def test_a_step_checks_its_session_in_its_lease_grant(db_url, stub, monkeypatch):
    """draft, critique and revise check the caller's session in the step's lease grant (one statement on
    PostgreSQL, graph/database.py ``SessionCheck``): a live session has its access recorded, and an unknown or
    expired one is refused with invalid_session and leaves no lease behind."""
    from redraft.graph.database import Database

    touches = []
    touch = Database.touch_session

    async def counted(self, check):
        touches.append(check)
        return await touch(self, check)

    monkeypatch.setattr(Database, "touch_session", counted)
    settings = make_settings(db_url, stub, session_ttl_seconds=300)
    async with Client(create_server(settings)) as client:
        sid = (await client.call_tool("create_session", {})).structured_content["session_id"]
        await client.call_tool("draft", {"session_id": sid, "query": "Q"})
        _set_accessed(db_url, sid, time.time() - 100)  # idle for a while, well within the TTL
        touches.clear()
        await client.call_tool("critique", {"session_id": sid})
        assert _accessed(db_url, sid) > time.time() - 10  # the access was recorded
        assert len(touches) == (0 if db_url.startswith("postgresql") else 1)  # no read of its own on PostgreSQL
        for gone in (str(uuid.uuid4()), sid):
            if gone == sid:
                _set_accessed(db_url, sid, time.time() - 400)  # expired
            with pytest.raises(ToolError, match="invalid_session"):
                await client.call_tool("revise", {"session_id": gone})
            sql_lease = "SELECT count(*) FROM redraft_leases WHERE thread_id = ?"
            assert sql_value(db_url, sql_lease, (thread_id_for(gone, "generic"),)) == 0


def _set_accessed(db_url: str, session_id: str, when: float) -> None:
    sql_value(db_url, "UPDATE redraft_sessions SET last_accessed = ? WHERE session_id = ?", (when, session_id))


def _accessed(db_url: str, session_id: str) -> float:
    return sql_value(db_url, "SELECT last_accessed FROM redraft_sessions WHERE session_id = ?", (session_id,))


async def test_sweep_spares_a_session_with_a_step_running(db_url, stub):
    """An idle-looking session whose thread holds a step lease is busy, not idle: the sweep leaves it (and its
    checkpoints) alone until the step ends. Leases are rows here; the memory backend is tested below."""
    await _sweep_spares_busy_session(make_settings(db_url, stub))


async def test_sweep_spares_a_session_with_a_step_running_in_memory(stub):
    """The memory backend keeps its step leases in the process; the sweep sees those too."""
    await _sweep_spares_busy_session(make_settings("memory", stub))


async def _sweep_spares_busy_session(settings) -> None:
    from redraft.graph.checkpointer import open_persistence
    from redraft.server.sessions import SessionStore

    async with open_persistence(settings) as p:
        store = SessionStore(p.db, p.saver, ttl_seconds=0.2, max_sessions=1000)
        busy = (await store.create("anon"))["session_id"]
        idle = (await store.create("anon"))["session_id"]
        await asyncio.sleep(0.4)
        async with p.db.thread_lock(thread_id_for(busy, "generic")):
            assert await store.sweep() == 1  # only the idle one
            with pytest.raises(ConflictError):  # the lease really is held
                async with p.db.thread_lock(thread_id_for(busy, "generic")):
                    pass
        assert {row["session_id"] for row in await p.db.fetchall("SELECT session_id FROM redraft_sessions")} == {busy}
        assert await store.sweep() == 1  # the step is over: now it is idle
        assert await p.db.fetchall("SELECT session_id FROM redraft_sessions") == []
        assert idle != busy
