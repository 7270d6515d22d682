"""Background runs through the plain tools (start_refine, run_status, wait_run, cancel_run, redraft://runs/{id}) and
every multitask_strategy: in-process FastMCP clients over the real app, real SQLite/PostgreSQL, the real HTTP stub."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError

from redraft.server.app import create_server
from tests.conftest import make_settings

NEVER_CONVERGES = {"similarity_threshold": 1.0}


@pytest.fixture
def server(db_url, stub):
    stub.configure(changes=[5])  # every revision changes words: runs go to max_loops
    return create_server(make_settings(db_url, stub, lease_ttl_seconds=2.0))


async def call(client, tool: str, **args) -> dict:
    return (await client.call_tool(tool, args)).structured_content


async def new_session(client) -> str:
    return (await call(client, "create_session"))["session_id"]


async def wait_until(client, run_id: str, predicate, within: float = 20.0) -> dict:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        view = await call(client, "run_status", run_id=run_id)
        if predicate(view):
            return view
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} never got there: {view}")


async def test_start_refine_returns_at_once_and_wait_run_returns_the_result(server, stub):
    stub.configure(latency_ms=100)
    async with Client(server) as client:
        sid = await new_session(client)
        started = time.monotonic()
        run = await call(
            client, "start_refine", session_id=sid, query="What is a lease?", max_loops=2, **NEVER_CONVERGES
        )
        assert time.monotonic() - started < 1.0 and run["status"] == "queued"
        assert "redraft_run" in server._docket.tasks  # queued on the tasks extension's Docket
        short = await call(client, "wait_run", run_id=run["run_id"], timeout_s=0.2)
        assert short["timed_out"] and short["status"] in ("queued", "running")
        done = await call(client, "wait_run", run_id=run["run_id"], timeout_s=30)
        assert done["status"] == "succeeded" and not done["timed_out"], done
        assert done["steps"] == 5 and done["loop"] == 2 and done["result"]["phase"] == "done"
        assert done["elapsed_s"] > 0 and done["error"] is None
        res = await client.read_resource(f"redraft://runs/{run['run_id']}")
        assert json.loads(res[0].text)["status"] == "succeeded"
        status = await call(client, "status", session_id=sid)
        assert status["final_text"] == done["result"]["final_text"]


async def test_bad_input_is_refused_and_creates_no_run(server, stub):
    async with Client(server) as client:
        sid = await new_session(client)
        with pytest.raises(ToolError, match="invalid_input"):
            await call(client, "start_refine", session_id=sid, query="x", max_loops=0)
        with pytest.raises(ToolError, match="invalid_input"):
            await call(client, "start_refine", session_id=sid, query="x", multitask_strategy="sometimes")
        with pytest.raises(ToolError, match="wrong_phase"):
            await call(client, "start_refine", session_id=sid)
        with pytest.raises(ToolError, match="not_found"):
            await call(client, "run_status", run_id="no-such-run")
        with pytest.raises(ToolError, match="invalid_input"):
            await call(client, "wait_run", run_id="x", timeout_s=51)
        with pytest.raises(ToolError, match="invalid_session"):
            await call(client, "start_refine", session_id="nope", query="x")
        assert (await call(client, "status", session_id=sid))["phase"] == "empty"
        await call(client, "draft", session_id=sid, query="Half done.")
        with pytest.raises(ToolError, match="wrong_phase"):  # the current query must be finished first
            await call(client, "start_refine", session_id=sid, query="Another one.")
        assert (await call(client, "status", session_id=sid))["slot"]["query"] == "Half done."


async def test_cancel_run_stops_a_model_call_within_a_second(server, stub):
    stub.configure(latency_ms=3000)  # the draft call is in flight for 3 s
    async with Client(server) as client:
        sid = await new_session(client)
        run = await call(client, "start_refine", session_id=sid, query="Slow one.", **NEVER_CONVERGES)
        await wait_until(client, run["run_id"], lambda v: v["status"] == "running")
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await call(client, "cancel_run", run_id=run["run_id"])
        final = await call(client, "wait_run", run_id=run["run_id"], timeout_s=5)
        latency = time.monotonic() - started
        assert final["status"] == "cancelled" and final["error"]["code"] == "cancelled", final
        assert latency < 1.0, latency
        stub.configure(latency_ms=0)
        # the thread is where the run left it (the query opened, no draft) and a new run continues it at once
        again = await call(client, "start_refine", session_id=sid, max_loops=1)
        done = await call(client, "wait_run", run_id=again["run_id"], timeout_s=30)
        assert done["status"] == "succeeded", done
        cancel_again = await call(client, "cancel_run", run_id=run["run_id"])
        assert cancel_again["status"] == "cancelled"


async def test_reject_is_the_default_for_a_busy_thread(server, stub):
    stub.configure(latency_ms=200)
    async with Client(server) as client:
        sid = await new_session(client)
        first = await call(client, "start_refine", session_id=sid, query="First.", max_loops=1, **NEVER_CONVERGES)
        with pytest.raises(ToolError, match="conflict"):
            await call(client, "start_refine", session_id=sid, query="Second.")
        done = await call(client, "wait_run", run_id=first["run_id"], timeout_s=30)
        assert done["status"] == "succeeded"


async def test_enqueue_runs_after_the_current_run(server, stub):
    stub.configure(latency_ms=100)
    async with Client(server) as client:
        sid = await new_session(client)
        first = await call(client, "start_refine", session_id=sid, query="First.", max_loops=2, **NEVER_CONVERGES)
        second = await call(
            client, "start_refine", session_id=sid, query="Second.", max_loops=1, multitask_strategy="enqueue"
        )
        a = await call(client, "wait_run", run_id=first["run_id"], timeout_s=30)
        b = await call(client, "wait_run", run_id=second["run_id"], timeout_s=30)
        assert a["status"] == b["status"] == "succeeded", (a, b)
        assert b["queued_s"] >= a["elapsed_s"] * 0.9  # it waited for the first one
        assert b["result"]["slots"] == 2 and b["result"]["slot"]["query"] == "Second."
        assert a["result"]["slot"]["query"] == "First."


async def test_interrupt_stops_the_current_run_at_a_step_boundary_and_keeps_its_checkpoints(server, stub):
    stub.configure(latency_ms=200)
    async with Client(server) as client:
        sid = await new_session(client)
        first = await call(client, "start_refine", session_id=sid, query="First.", max_loops=5, **NEVER_CONVERGES)
        await wait_until(client, first["run_id"], lambda v: v["steps"] >= 2)
        second = await call(
            client, "start_refine", session_id=sid, query="Second.", max_loops=1, multitask_strategy="interrupt"
        )
        b = await call(client, "wait_run", run_id=second["run_id"], timeout_s=30)
        a = await call(client, "run_status", run_id=first["run_id"])
        assert a["status"] == "interrupted" and 2 <= a["steps"] < 11, a
        assert b["status"] == "succeeded", b
        assert b["result"]["slots"] == 2 and b["result"]["slot"]["query"] == "Second."
        history = await call(client, "history", session_id=sid, limit=100)
        texts = json.dumps(history)
        assert "interrupted" in texts  # the first query was closed as interrupted, its steps kept


async def test_rollback_cancels_the_current_run_and_removes_its_checkpoints(server, stub):
    stub.configure(latency_ms=200)
    async with Client(server) as client:
        sid = await new_session(client)
        warm = await call(client, "start_refine", session_id=sid, query="Before.", max_loops=1)
        assert (await call(client, "wait_run", run_id=warm["run_id"], timeout_s=30))["status"] == "succeeded"
        before = await call(client, "status", session_id=sid)
        first = await call(client, "start_refine", session_id=sid, query="First.", max_loops=5, **NEVER_CONVERGES)
        await wait_until(client, first["run_id"], lambda v: v["steps"] >= 2)
        second = await call(
            client, "start_refine", session_id=sid, query="Second.", max_loops=1, multitask_strategy="rollback"
        )
        b = await call(client, "wait_run", run_id=second["run_id"], timeout_s=30)
        a = await call(client, "run_status", run_id=first["run_id"])
        assert a["status"] == "cancelled", a
        assert b["status"] == "succeeded", b
        assert b["result"]["slots"] == 2 and b["result"]["slot"]["query"] == "Second."  # "First." is gone
        history = await call(client, "history", session_id=sid, limit=100)
        assert "First." not in json.dumps(history)
        assert any(c["checkpoint_id"] == before["checkpoint_id"] for c in history["checkpoints"])


async def test_another_principal_cannot_see_wait_for_or_cancel_a_run(tmp_path, stub):
    from tests.servers import HttpServer, server_env

    tokens = {"tok-runs-alice-0001": "alice", "tok-runs-bob-0002": "bob"}
    env = server_env(str(tmp_path / "runs.sqlite"), stub.base_url, REDRAFT_AUTH_TOKENS=json.dumps(tokens))
    stub.configure(latency_ms=300, changes=[5])
    server = HttpServer(env).start()
    try:
        async with (
            Client(server.url, auth="tok-runs-alice-0001") as alice,
            Client(server.url, auth="tok-runs-bob-0002") as bob,
        ):
            sid = await new_session(alice)
            run = await call(alice, "start_refine", session_id=sid, query="Alice's.", max_loops=1)
            for tool, args in [
                ("run_status", {"run_id": run["run_id"]}),
                ("wait_run", {"run_id": run["run_id"], "timeout_s": 1}),
                ("cancel_run", {"run_id": run["run_id"]}),
            ]:
                with pytest.raises(ToolError, match=r"^not_found: "):
                    await bob.call_tool(tool, args)
            with pytest.raises(Exception, match=r"not_found|No run"):
                await bob.read_resource(f"redraft://runs/{run['run_id']}")
            with pytest.raises(ToolError, match="invalid_session"):
                await bob.call_tool(
                    "start_refine", {"session_id": sid, "query": "Bob's.", "multitask_strategy": "rollback"}
                )
            done = await call(alice, "wait_run", run_id=run["run_id"], timeout_s=30)
    finally:
        server.stop()
    assert done["status"] == "succeeded"  # Bob's cancel changed nothing
