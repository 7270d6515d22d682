"""The MCP facade through real clients: fastmcp.Client in-memory, over HTTP to a real `redraft serve` subprocess and
over stdio, and the official `mcp` SDK client -- in both protocol eras."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import mcp
import pytest
from fastmcp import Client
from fastmcp.client.transports import StdioTransport
from fastmcp.exceptions import ToolError

from redraft.server.app import create_server
from tests.clients import PlainClient
from tests.conftest import make_settings
from tests.servers import REDRAFT, http_server, serve_in_process, server_env

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def server(db_url, stub):
    return create_server(make_settings(db_url, stub))


async def new_session(client) -> str:
    return (await client.call_tool("create_session", {})).structured_content["session_id"]


async def test_step_tools_phase_errors_and_resources_in_memory(server, stub):
    async with Client(server) as client:
        sid = await new_session(client)
        with pytest.raises(ToolError, match="wrong_phase: Cannot revise now: there is no query yet"):
            await client.call_tool("revise", {"session_id": sid})
        with pytest.raises(Exception, match="not_found"):
            await client.read_resource(f"redraft://sessions/{sid}/generic/latest_critique")

        r = await client.call_tool("draft", {"session_id": sid, "query": "What is MCP?"})
        assert r.structured_content["phase"] == "ready_to_critique"
        with pytest.raises(ToolError, match=r"wrong_phase: .*no pending critique"):
            await client.call_tool("revise", {"session_id": sid})
        r = await client.call_tool("critique", {"session_id": sid})
        assert r.structured_content["phase"] == "needs_revision"
        with pytest.raises(ToolError, match="wrong_phase"):
            await client.call_tool("critique", {"session_id": sid})
        r = await client.call_tool("revise", {"session_id": sid})
        slot = r.structured_content["slot"]
        assert len(slot["critique"]) == len(slot["revision"]) == 1

        critique = (await client.read_resource(f"redraft://sessions/{sid}/generic/latest_critique"))[0].text
        assert critique == slot["critique"][-1]
        with pytest.raises(Exception, match=r"not_found: .*1 revision"):
            await client.read_resource(f"redraft://sessions/{sid}/generic/penultimate_revision")

        r = await client.call_tool("critique", {"session_id": sid, "text": "Round 2: client-side critique."})
        assert r.structured_content["slot"]["critique"][-1] == "Round 2: client-side critique."
        r = await client.call_tool("revise", {"session_id": sid})
        penultimate = (await client.read_resource(f"redraft://sessions/{sid}/generic/penultimate_revision"))[0].text
        assert penultimate == r.structured_content["slot"]["revision"][-2]

        conv = json.loads((await client.read_resource(f"redraft://sessions/{sid}/generic/convergence"))[0].text)
        assert [p["similarity"] for p in conv["similarities"]] == pytest.approx(r.structured_content["similarities"])
        assert conv["threshold"] == 0.98 and conv["converged"] is False
        run_log = json.loads((await client.read_resource(f"redraft://sessions/{sid}/generic/run_log"))[0].text)
        assert run_log == [r.structured_content["slot"]]


async def test_refine_sends_progress_and_returns_the_slot(server, stub):
    progress = []

    async def on_progress(value, total, message):
        progress.append((value, total, message))

    async with PlainClient(server) as client:
        sid = await new_session(client)
        r = await client.call_tool(
            "refine", {"session_id": sid, "query": "Explain checkpoints."}, progress_handler=on_progress
        )
    result = r.structured_content
    assert result["stop_reason"] == "converged" and result["phase"] == "done"
    assert result["final_text"] == result["slot"]["revision"][-1]
    assert len(result["similarities"]) == 3
    assert [m for _, _, m in progress] == [f"{node} finished" for node in ["draft"] + ["critique", "revise"] * 3]
    assert [v for v, _, _ in progress] == list(range(1, 8))
    assert {t for _, t, _ in progress} == {11}  # 1 + 2 x max_loops (generic: 5), from the run's own config


async def test_sessions_isolate_companions_and_end_deletes_threads(server, stub, db_url):
    async with Client(server) as client:
        sid = await new_session(client)
        await client.call_tool("refine", {"session_id": sid, "query": "Code please.", "companion": "code"})
        generic = await client.call_tool("status", {"session_id": sid})
        assert generic.structured_content["phase"] == "empty"  # one thread per (session, companion)
        listed = (await client.call_tool("list_sessions", {})).structured_content["sessions"]
        assert sid in [s["session_id"] for s in listed]
        ended = await client.call_tool("end_session", {"session_id": sid})
        assert ended.structured_content["threads_deleted"] == 1
        for bad in (sid, "not-a-uuid", "00000000-0000-0000-0000-000000000000"):
            with pytest.raises(ToolError, match=r"^invalid_session: Invalid or unknown session\.$"):
                await client.call_tool("status", {"session_id": bad})
        with pytest.raises(ToolError, match=r"unknown_companion: .*generic"):
            await client.call_tool("status", {"session_id": await new_session(client), "companion": "poet"})


async def test_bad_arguments_are_rejected_before_anything_runs(server, stub):
    async with Client(server) as client:
        sid = await new_session(client)
        for args in (
            {"session_id": sid, "query": "q", "similarity_threshold": 1.5},
            {"session_id": sid, "query": "q", "max_loops": 0},
            {"session_id": sid, "query": "q", "sampling": {"api_key": "sk-live"}},
            {"session_id": sid, "query": 42},
        ):
            with pytest.raises(ToolError):
                await client.call_tool("draft", args)
        status = await client.call_tool("status", {"session_id": sid})
        assert status.structured_content["phase"] == "empty"
    assert stub.requests == []


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_http_subprocess_with_official_sdk_client(tmp_path, stub, mode):
    """A real `redraft serve --transport http`, driven by the official MCP SDK in both protocol eras."""
    env = server_env(str(tmp_path / "http.sqlite"), stub.base_url)
    with http_server(env) as srv:
        async with mcp.Client(srv.url, mode=mode) as client:
            assert client.session.protocol_version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
            sid = (await client.call_tool("create_session", {})).structured_content["session_id"]
            r = await client.call_tool("draft", {"session_id": sid, "query": "Official client."})
            assert r.structured_content["phase"] == "ready_to_critique"
            r = await client.call_tool("critique", {"session_id": sid})
            assert r.structured_content["phase"] == "needs_revision"
            r = await client.call_tool("revise", {"session_id": sid})
            assert r.structured_content["phase"] == "ready_to_critique"
            bad = await client.call_tool("revise", {"session_id": sid})
            assert bad.is_error and "wrong_phase" in bad.content[0].text
            progress = []

            async def on_progress(value, total, message):
                progress.append(message)

            r = await client.call_tool("refine", {"session_id": sid}, progress_callback=on_progress)
            assert r.structured_content["stop_reason"] == "converged"
            assert progress and progress[-1] == "revise finished"
            res = await client.read_resource(f"redraft://sessions/{sid}/generic/run_log")
            assert json.loads(res.contents[0].text)[0]["revision"] == r.structured_content["slot"]["revision"]


async def test_http_fastmcp_client_both_eras_share_sessions(tmp_path, stub):
    env = server_env(str(tmp_path / "eras.sqlite"), stub.base_url)
    with http_server(env) as srv:
        async with Client(srv.url, mode="legacy") as old:
            assert old.protocol_version == "2025-11-25"
            sid = await new_session(old)
            await old.call_tool("draft", {"session_id": sid, "query": "Across eras."})
        async with Client(srv.url, mode="2026-07-28") as new:
            assert new.protocol_version == "2026-07-28"
            r = await new.call_tool("refine", {"session_id": sid})
            assert r.structured_content["stop_reason"] == "converged"


async def test_stdio_server(tmp_path, stub):
    env = server_env(str(tmp_path / "stdio.sqlite"), stub.base_url)
    async with Client(StdioTransport(REDRAFT, ["serve"], env=env)) as client:
        sid = await new_session(client)
        r = await client.call_tool("refine", {"session_id": sid, "query": "Over stdio.", "companion": "essay"})
        assert r.structured_content["stop_reason"] in ("converged", "max_loops")
        assert r.structured_content["slot"]["variant"] == "essay"


async def test_auth_isolates_principals_and_guards_hosts(tmp_path, stub):
    env = server_env(
        str(tmp_path / "auth.sqlite"), stub.base_url, REDRAFT_AUTH_TOKENS='{"tok-alice": "alice", "tok-bob": "bob"}'
    )
    with http_server(env) as srv:
        async with Client(srv.url, auth="tok-alice") as alice, Client(srv.url, auth="tok-bob") as bob:
            sid = await new_session(alice)
            await alice.call_tool("draft", {"session_id": sid, "query": "Alice's secret plan."})
            for tool, args in [
                ("status", {"session_id": sid}),
                ("critique", {"session_id": sid}),
                ("refine", {"session_id": sid}),
                ("end_session", {"session_id": sid}),
            ]:
                with pytest.raises(ToolError, match=r"^invalid_session: Invalid or unknown session\.$"):
                    await bob.call_tool(tool, args)
            with pytest.raises(Exception, match="invalid_session"):
                await bob.read_resource(f"redraft://sessions/{sid}/generic/run_log")
            assert (await bob.call_tool("list_sessions", {})).structured_content["sessions"] == []
            status = await alice.call_tool("status", {"session_id": sid})
            assert status.structured_content["slot"]["query"] == "Alice's secret plan."
        async with httpx.AsyncClient() as raw:
            body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
            headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
            assert (await raw.post(srv.url, json=body, headers=headers)).status_code == 401
            auth = {**headers, "authorization": "Bearer tok-alice"}
            evil_origin = await raw.post(srv.url, json=body, headers={**auth, "origin": "http://evil.example"})
            assert evil_origin.status_code == 403
            evil_host = await raw.post(srv.url, json=body, headers={**auth, "host": "evil.example"})
            assert evil_host.status_code == 421


async def test_make_serve_speaks_clean_stdio(tmp_path, stub):
    """The README's `make serve` must put nothing but MCP on stdout (no make echo, no install chatter)."""
    env = server_env(str(tmp_path / "make.sqlite"), stub.base_url)
    params = mcp.StdioServerParameters(command="make", args=["serve"], cwd=str(ROOT), env=env)
    async with mcp.Client(params, mode="legacy") as client:
        assert client.session.protocol_version == "2025-11-25"
        sid = (await client.call_tool("create_session", {})).structured_content["session_id"]
        r = await client.call_tool("refine", {"session_id": sid, "query": "Via make."})
        assert r.structured_content["stop_reason"] == "converged"


async def test_stateless_calls_do_not_list_every_tool_first(db_url, stub):
    """On the 2026-07-28 transport the SDK checks each tools/call's Mcp-Param headers against the tool's input
    schema. redraft hands it a direct lookup; without one, every call would first run a whole tools/list through
    the server (and its middleware)."""
    from fastmcp.server.middleware import Middleware

    listings = []

    class CountListings(Middleware):
        async def on_list_tools(self, context, call_next):
            listings.append(context.message)
            return await call_next(context)

    app = create_server(make_settings(db_url, stub))
    app.add_middleware(CountListings())
    async with serve_in_process(app) as url, Client(url, mode="2026-07-28") as client:
        assert client.protocol_version == "2026-07-28"
        sid = await new_session(client)
        await client.call_tool("draft", {"session_id": sid, "query": "Stateless."})
        before = len(listings)
        for _ in range(3):
            r = await client.call_tool("status", {"session_id": sid})
            assert r.structured_content["phase"] == "ready_to_critique"
        assert len(listings) == before
        # the lookup serves exactly what tools/list advertises
        advertised = {t.name: t.input_schema for t in await client.list_tools()}
        assert set(advertised) >= {"draft", "critique", "revise", "refine", "status"}
        assert app._mcp_server.get_tool_input_schema("refine") == advertised["refine"]
        assert app._mcp_server.get_tool_input_schema("no_such_tool") is None
