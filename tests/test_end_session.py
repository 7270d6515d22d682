"""Ending a busy session is atomic: refused with session_busy while a step runs, complete once it goes ahead, and no
row of the session is left in any table, even for a step that validated the session just before it ended."""

from __future__ import annotations

import asyncio

import pytest
from fastmcp.exceptions import ToolError

from redraft.errors import SessionNotFoundError
from redraft.graph.runner import thread_id_for
from redraft.server.app import create_server
from tests.clients import PlainClient as Client
from tests.conftest import make_settings


async def _rows_of(db, session_id: str) -> dict[str, int]:
    """Rows that belong to the session in every table of the database (tombstone leases aside)."""
    if db.kind == "postgres":
        tables = [r["t"] for r in await db.fetchall("SELECT tablename AS t FROM pg_tables WHERE schemaname='public'")]
    else:
        tables = [r["t"] for r in await db.fetchall("SELECT name AS t FROM sqlite_master WHERE type = 'table'")]
    assert {"checkpoints", "redraft_sessions", "redraft_leases"} <= set(tables)
    counts = {}
    for table in tables:
        columns = (
            [
                r["c"]
                for r in await db.fetchall(
                    "SELECT column_name AS c FROM information_schema.columns WHERE table_name = ?", (table,)
                )
            ]
            if db.kind == "postgres"
            else [r["name"] for r in await db.fetchall(f"PRAGMA table_info({table})")]
        )
        key = "thread_id" if "thread_id" in columns else "session_id" if "session_id" in columns else None
        if key is None:
            continue
        extra = " AND owner <> 'ended'" if table == "redraft_leases" else ""
        row = await db.fetchone(f"SELECT count(*) AS n FROM {table} WHERE {key} LIKE ?{extra}", (f"{session_id}%",))
        counts[table] = int(row["n"])
    return counts


async def test_end_session_refuses_while_a_step_runs_then_leaves_no_row(db_url, stub):
    settings = make_settings(db_url, stub)
    server = create_server(settings)
    async with Client(server) as client:
        sid = (await client.call_tool("create_session", {})).structured_content["session_id"]
        await client.call_tool("refine", {"session_id": sid, "query": "First query.", "companion": "essay"})
        stub.configure(latency_ms=400)
        running = asyncio.create_task(
            client.call_tool("refine", {"session_id": sid, "query": "Long run.", "max_loops": 2})
        )
        await asyncio.sleep(0.3)
        with pytest.raises(ToolError, match=r"^session_busy: .*\(retryable\)$"):
            await client.call_tool("end_session", {"session_id": sid})
        done = await running  # the refused end changed nothing: the run finishes
        assert done.structured_content["phase"] == "done"
        db = server._lifespan_result["redraft"].runner.persistence.db
        assert sum((await _rows_of(db, sid)).values()) > 0
        ended = await client.call_tool("end_session", {"session_id": sid})
        assert ended.structured_content["threads_deleted"] == 2
        assert await _rows_of(db, sid) == dict.fromkeys(await _rows_of(db, sid), 0)
        with pytest.raises(ToolError, match=r"^invalid_session"):
            await client.call_tool("status", {"session_id": sid})


async def test_a_step_that_validated_the_session_before_it_ended_writes_nothing(db_url, stub):
    settings = make_settings(db_url, stub)
    server = create_server(settings)
    async with Client(server) as client:
        sid = (await client.call_tool("create_session", {})).structured_content["session_id"]
        await client.call_tool("draft", {"session_id": sid, "query": "Race the end."})
        app = server._lifespan_result["redraft"]
        thread = thread_id_for(sid, "generic")  # validated: the session was live when this call began
        await client.call_tool("end_session", {"session_id": sid})
        with pytest.raises(SessionNotFoundError):
            await app.runner.critique(thread)
        with pytest.raises(SessionNotFoundError):
            await app.runner.refine(thread_id_for(sid, "code"), "code", "A new thread of the ended session.")
        assert set((await _rows_of(app.runner.persistence.db, sid)).values()) == {0}
