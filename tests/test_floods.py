"""Bounded under floods: abandoned MCP transport sessions expire and the least recently used idle ones are evicted,
so a new client always gets in and memory stays flat; redraft's own ``max_sessions`` is a real cap.

Floods are raw 2025-era ``initialize`` requests over loopback HTTP to a real ``redraft serve`` subprocess, each
client vanishing right after its handshake."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest
from fastmcp.exceptions import ToolError

from redraft.server.app import create_server
from tests.clients import PlainClient as Client
from tests.conftest import make_settings
from tests.servers import HttpServer, server_env

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "flood", "version": "0"}},
}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def abandon(http: httpx.AsyncClient, url: str, n: int, concurrency: int = 16) -> list[str]:
    """Open ``n`` transport sessions and walk away from each; their ids in the order they were opened."""
    ids: list[str | None] = [None] * n
    gate = asyncio.Semaphore(concurrency)

    async def one(k: int) -> None:
        async with gate:
            r = await http.post(url, json=INITIALIZE, headers=HEADERS)
            assert r.status_code == 200, r.text
            ids[k] = r.headers["mcp-session-id"]

    if concurrency == 1:
        for k in range(n):
            await one(k)
    else:
        await asyncio.gather(*(one(k) for k in range(n)))
    return ids


async def ping(http: httpx.AsyncClient, url: str, session_id: str) -> int:
    """The HTTP status of a ping on a transport session: 200 while it is open, 404 once it is gone."""
    r = await http.post(
        url,
        json={"jsonrpc": "2.0", "id": 2, "method": "ping"},
        headers={**HEADERS, "mcp-session-id": session_id, "mcp-protocol-version": "2025-11-25"},
    )
    return r.status_code


async def new_clients_work(url: str) -> None:
    """A 2025-era client (initialize handshake, a transport session) and a default client both get in and work."""
    for mode in ("legacy", "auto"):
        async with Client(url, mode=mode) as client:
            created = await client.call_tool("create_session", {})
            assert created.structured_content["session_id"]


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


@pytest.fixture
def serve(tmp_path, stub):
    servers: list[HttpServer] = []

    def start(**env: str) -> HttpServer:
        server = HttpServer(server_env(str(tmp_path / "redraft.sqlite"), stub.base_url, **env)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


async def test_the_least_recently_used_idle_session_is_evicted_at_the_cap(serve):
    server = serve(REDRAFT_MAX_TRANSPORT_SESSIONS="40")
    async with httpx.AsyncClient(timeout=30) as http, Client(server.url, mode="legacy") as live:
        await live.call_tool("create_session", {})  # a connected client holding its stream: busy, never evicted
        oldest = await abandon(http, server.url, 5, concurrency=1)
        assert [await ping(http, server.url, sid) for sid in oldest] == [200] * 5  # open, but now more recent
        newest = await abandon(http, server.url, 200)  # 5x the cap: every one admitted, none refused
        assert [await ping(http, server.url, sid) for sid in oldest] == [404] * 5  # evicted, oldest first
        assert await ping(http, server.url, newest[-1]) == 200
        await live.call_tool("create_session", {})  # the live client was never cut off
        await new_clients_work(server.url)


async def test_idle_transport_sessions_expire(serve):
    server = serve(REDRAFT_TRANSPORT_SESSION_IDLE_SECONDS="1")
    async with httpx.AsyncClient(timeout=30) as http:
        idle, kept = await abandon(http, server.url, 2, concurrency=1)
        for _ in range(3):
            await asyncio.sleep(0.5)
            assert await ping(http, server.url, kept) == 200  # activity renews
        assert await ping(http, server.url, idle) == 404  # 1.5 s without a request: gone
        await new_clients_work(server.url)


async def test_memory_plateaus_under_a_flood_at_default_settings(serve):
    """Abandoned sessions past the default cap (1000): memory plateaus instead of growing ~40 KB per session (the
    second 1,200 below grew RSS by ~50 MB before; 10,000 by ~380 MB), and a new client still gets in."""
    server = serve()
    async with httpx.AsyncClient(timeout=60) as http:
        await new_clients_work(server.url)  # warm: every code path loaded before the baseline
        await abandon(http, server.url, 200)
        start = rss_mb(server.proc.pid)
        await abandon(http, server.url, 1200)  # the cap is full: from here on each newcomer evicts one
        full = rss_mb(server.proc.pid)
        await abandon(http, server.url, 1200)
        end = rss_mb(server.proc.pid)
        await new_clients_work(server.url)
    assert end - full < 15, f"RSS still grew {end - full:.0f} MB past the cap"
    assert end - start < 100, f"RSS grew {end - start:.0f} MB"


async def test_max_sessions_is_a_real_cap_with_a_retry_hint(db_url, stub):
    settings = make_settings(db_url, stub, max_sessions=3, session_ttl_seconds=3.0, sweep_interval_seconds=3600)
    async with Client(create_server(settings)) as client:
        held = [(await client.call_tool("create_session", {})).structured_content["session_id"] for _ in range(3)]
        with pytest.raises(ToolError) as refused:
            await client.call_tool("create_session", {})
        message = str(refused.value)
        assert message.startswith("session_limit: ") and message.endswith("(retryable)")
        assert re.search(r"Retry in about [23] s, when the oldest idle session expires", message), message
        listed = (await client.call_tool("list_sessions", {})).structured_content["sessions"]
        assert sorted(s["session_id"] for s in listed) == sorted(held)  # nothing was added
        await asyncio.sleep(1.5)
        await client.call_tool("status", {"session_id": held[0]})  # keeps this one live
        await asyncio.sleep(2.0)
        # the two idle ones expired and are swept to make room; the live one stays and still counts
        await client.call_tool("create_session", {})
        await client.call_tool("create_session", {})
        with pytest.raises(ToolError, match="session_limit"):
            await client.call_tool("create_session", {})
        await client.call_tool("status", {"session_id": held[0]})
        await client.call_tool("end_session", {"session_id": held[0]})
        await client.call_tool("create_session", {})


async def test_a_token_in_a_query_string_gets_401_and_is_never_logged(tmp_path, stub):
    configured = "configured-secret-4f9a"
    log = tmp_path / "server.log"
    env = server_env(
        str(tmp_path / "redraft.sqlite"),
        stub.base_url,
        REDRAFT_AUTH_TOKENS=f'{{"{configured}": "team-a"}}',
        REDRAFT_LOG_LEVEL="INFO",  # uvicorn's access log on
    )
    server = HttpServer(env, log=log).start()
    leaked = [configured, "unknown-token-77d1", "api-key-0c3e", "bearer-in-url-91b2"]
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            queries = [
                f"access_token={configured}",
                f"token={leaked[1]}",
                f"API_KEY={leaked[2]}&page=2",
                f"%61ccess_token={leaked[3]}",  # percent-encoded name
                f"note={configured}",  # a configured secret under any name
            ]
            for query in queries:
                for method in ("GET", "POST"):
                    r = await http.request(method, f"{server.url}?{query}", headers={"Authorization": "Bearer x"})
                    assert r.status_code == 401, (query, r.status_code)
                    assert "Credentials in the URL are refused" in r.json()["error_description"]
            # an ordinary query string and a token in the header still work
            async with Client(f"{server.url}?page=2", auth=configured) as client:
                assert (await client.call_tool("create_session", {})).structured_content["session_id"]
    finally:
        server.stop()
    text = log.read_text()
    for secret in leaked:
        assert secret not in text
    assert "Logging error" not in text and "Traceback" not in text
    # the access log kept its lines, with the credential masked
    assert re.search(r'"GET /mcp\?access_token=\*{4} HTTP/1.1" 401', text), text[-3000:]
    assert re.search(r'"POST /mcp\?token=\*{4} HTTP/1.1" 401', text)
    assert re.search(r'"GET /mcp\?API_KEY=\*{4}&page=2 HTTP/1.1" 401', text)


@pytest.mark.postgres
async def test_racing_creates_on_two_replicas_never_pass_the_cap(pg_url, stub):
    from redraft.errors import SessionLimitError
    from redraft.graph.checkpointer import open_persistence
    from redraft.server.sessions import SessionStore

    settings = make_settings(pg_url, stub, max_sessions=5)
    async with open_persistence(settings) as pa, open_persistence(settings) as pb:
        stores = [SessionStore(p.db, p.saver, 600, 5) for p in (pa, pb)]
        results = await asyncio.gather(*[stores[i % 2].create("anon") for i in range(30)], return_exceptions=True)
        assert sum(not isinstance(r, BaseException) for r in results) == 5
        assert all(isinstance(r, SessionLimitError) for r in results if isinstance(r, BaseException))
        assert (await pa.db.fetchone("SELECT count(*) AS n FROM redraft_sessions"))["n"] == 5
