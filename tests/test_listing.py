"""No listing for strangers: over HTTP without auth every client is the same anonymous principal, so
``list_sessions`` reveals only the sessions a caller names. A local stdio server (one user) keeps the full list."""

from __future__ import annotations

import uuid

import pytest
from fastmcp.client.transports import StdioTransport
from fastmcp.exceptions import ToolError

from tests.clients import PlainClient as Client
from tests.servers import REDRAFT, HttpServer, server_env


async def _new_session(client: Client) -> str:
    return (await client.call_tool("create_session", {})).structured_content["session_id"]


async def _listed(client: Client, **arguments) -> list[str]:
    result = await client.call_tool("list_sessions", arguments)
    return [row["session_id"] for row in result.structured_content["sessions"]]


async def test_two_anonymous_http_clients_never_see_each_others_sessions(tmp_path, stub):
    server = HttpServer(server_env(str(tmp_path / "redraft.sqlite"), stub.base_url)).start()
    try:
        async with Client(server.url, mode="legacy") as alice, Client(server.url) as bob:
            secret = await _new_session(alice)
            await alice.call_tool("draft", {"session_id": secret, "query": "Alice's private question."})
            mine = await _new_session(bob)
            # a bare listing would hand bob alice's id: refused, with what to do instead
            with pytest.raises(ToolError, match=r"^invalid_input: .*pass session_ids"):
                await bob.call_tool("list_sessions", {})
            with pytest.raises(ToolError, match="invalid_input"):
                await alice.call_tool("list_sessions", {"limit": 5})
            # named sessions: the live ones among them, nothing else
            assert await _listed(bob, session_ids=[mine]) == [mine]
            unknown = str(uuid.uuid4())
            assert await _listed(bob, session_ids=[mine, unknown, "not-an-id", mine.upper()]) == [mine]
            assert await _listed(bob, session_ids=[]) == []
            assert await _listed(alice, session_ids=[secret, mine], limit=1) in ([secret], [mine])
            await bob.call_tool("end_session", {"session_id": mine})
            assert await _listed(bob, session_ids=[mine]) == []
    finally:
        server.stop()


async def test_a_local_stdio_server_keeps_the_full_list(tmp_path, stub):
    env = server_env(str(tmp_path / "stdio.sqlite"), stub.base_url)
    async with Client(StdioTransport(REDRAFT, ["serve"], env=env)) as client:
        created = {await _new_session(client) for _ in range(2)}
        assert set(await _listed(client)) == created
        one = next(iter(created))
        assert await _listed(client, session_ids=[one]) == [one]
