"""Scale-out: two `redraft serve` processes on one PostgreSQL share sessions, threads and stats, and never both
append to one thread."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastmcp.exceptions import ToolError

from tests.clients import PlainClient as Client
from tests.servers import http_server, server_env

pytestmark = pytest.mark.postgres


async def test_two_servers_share_sessions_stats_and_serialise_steps(pg_url, stub):
    env = server_env(pg_url, stub.base_url)
    with http_server(env) as a, http_server(env) as b:
        async with Client(a.url) as ca, Client(b.url) as cb:
            sid = (await ca.call_tool("create_session", {})).structured_content["session_id"]
            await ca.call_tool(
                "draft",
                {"session_id": sid, "query": "Across processes.", "companion": "essay", "similarity_threshold": 0.99},
            )
            r = await cb.call_tool("critique", {"session_id": sid, "companion": "essay"})
            assert r.structured_content["phase"] == "needs_revision"
            await ca.call_tool("revise", {"session_id": sid, "companion": "essay"})
            r = await cb.call_tool("refine", {"session_id": sid, "companion": "essay"})
            assert r.structured_content["phase"] == "done"
            # without auth over HTTP, a client lists only the sessions it names
            listed = (await ca.call_tool("list_sessions", {"session_ids": [sid]})).structured_content["sessions"]
            assert sid in [s["session_id"] for s in listed]

            # stats recorded by one process are read by the other
            for client in (ca, cb, ca):
                s = (await client.call_tool("create_session", {})).structured_content["session_id"]
                await client.call_tool("refine", {"session_id": s, "query": "Stats.", "companion": "code"})
            stats_a = json.loads((await ca.read_resource("redraft://stats/code"))[0].text)
            stats_b = json.loads((await cb.read_resource("redraft://stats/code"))[0].text)
            assert stats_a == stats_b and stats_a["runs"] >= 3

            # two simultaneous step calls on one thread, one per process: exactly one appends
            stub.configure(latency_ms=500)
            sid2 = (await ca.call_tool("create_session", {})).structured_content["session_id"]
            await ca.call_tool("draft", {"session_id": sid2, "query": "Race me."})
            results = await asyncio.gather(
                ca.call_tool("critique", {"session_id": sid2}),
                cb.call_tool("critique", {"session_id": sid2}),
                return_exceptions=True,
            )
            errors = [r for r in results if isinstance(r, Exception)]
            assert len(errors) == 1 and isinstance(errors[0], ToolError)
            assert "conflict" in str(errors[0]) and "retryable" in str(errors[0])
            status = await cb.call_tool("status", {"session_id": sid2})
            slot = status.structured_content["slot"]
            assert len(slot["critique"]) == 1 and len(slot["revision"]) == 0
