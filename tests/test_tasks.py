"""MCP background tasks (io.modelcontextprotocol/tasks) through the official `mcp` SDK client against real
`redraft serve` processes on PostgreSQL and Redis: a long refine survives a 5 s read timeout by task polling.
Step-mode gates inside a task are in tests/test_task_gates.py."""

from __future__ import annotations

import asyncio
import itertools
import re
import time

import mcp
from fastmcp_tasks.client_models import ClientCreateTaskResult

from tests.servers import HttpServer, http_server, server_env
from tests.task_client import TasksOptIn, cancel_task, get_task, poll


async def test_official_sdk_client_with_5s_read_timeout_completes_a_20_step_refine_by_task_polling(
    pg_url, redis_url, stub
):
    # the stub answers one reply per second and never converges: 1 draft + 2 x 10 loops = 21 model replies (~21 s);
    # each reply streams over its second half, so a poll once a second sees "tokens so far" within steps
    stub.configure(latency_ms=500, stream_ms=500, changes=[12])
    with http_server(server_env(pg_url, stub.base_url, REDRAFT_REDIS_URL=redis_url)) as server:
        async with mcp.Client(server.url, read_timeout_seconds=5, extensions=[TasksOptIn()]) as client:
            sid = (await client.call_tool("create_session", {})).structured_content["session_id"]
            args = {"session_id": sid, "query": "Explain durable runs.", "max_loops": 10, "similarity_threshold": 1.0}
            started = time.monotonic()
            created = await client.session.call_tool("refine", args, allow_claimed=True)
            assert isinstance(created, ClientCreateTaskResult) and created.status == "working"
            assert time.monotonic() - started < 1.0
            assert created.poll_interval_ms == 1000
            # the task id names its run record from the first moment
            early = await client.call_tool("run_status", {"run_id": created.task_id})
            assert not early.is_error and early.structured_content["status"] in ("queued", "running"), early

            task, seen = await poll(client, created.task_id)
            elapsed = time.monotonic() - started
            # one run record, two views: the task id is a run id
            run = (await client.call_tool("run_status", {"run_id": created.task_id})).structured_content

    assert task.status == "completed", seen[-3:]
    assert not task.result.get("isError")
    view = task.result["structuredContent"]
    assert view["phase"] == "done" and view["session_id"] == sid
    assert len(view["slot"]["revision"]) == 10
    assert len(stub.requests) == 21
    assert elapsed > 20  # far longer than the client's read timeout, which no single request came near
    assert run["status"] == "succeeded" and run["kind"] == "refine" and run["steps"] == 21 and run["loop"] == 10
    assert run["result"]["checkpoint_id"] == view["checkpoint_id"]
    # progress: the status message followed the run step by step (and within steps: tokens so far)
    messages = [m for status, m in seen if status == "working" and m]
    assert len(set(messages)) >= 15, messages
    # step messages in order, from early to late in the run (a poll sees a step's message until the next reply
    # streams, about half of each second)
    steps = [int(found.group(1)) for m in messages if (found := re.match(r"step (\d+)/21: ", m))]
    assert len(set(steps)) >= 5 and steps == sorted(steps) and max(steps) >= 11, messages
    assert any("tokens so far" in m for m in messages), messages


async def test_tasks_cancel_stops_the_run_mid_model_call_and_the_thread_resumes(pg_url, redis_url, stub):
    stub.configure(latency_ms=1500, changes=[12])
    with http_server(server_env(pg_url, stub.base_url, REDRAFT_REDIS_URL=redis_url)) as server:
        async with (
            mcp.Client(server.url, read_timeout_seconds=5, extensions=[TasksOptIn()]) as tasks_client,
            mcp.Client(server.url, read_timeout_seconds=5) as tool_client,
        ):
            sid = (await tool_client.call_tool("create_session", {})).structured_content["session_id"]
            args = {"session_id": sid, "query": "Cancel me.", "max_loops": 3, "similarity_threshold": 1.0}
            created = await tasks_client.session.call_tool("refine", args, allow_claimed=True)
            for _ in range(200):  # until the draft committed and the critique's model call is in flight
                if len(stub.requests) >= 2:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            started = time.monotonic()
            await cancel_task(tasks_client, created.task_id)
            while True:
                run = (await tool_client.call_tool("run_status", {"run_id": created.task_id})).structured_content
                if run["status"] != "running":
                    break
                await asyncio.sleep(0.05)
            cancel_latency = time.monotonic() - started
            task = await get_task(tasks_client, created.task_id)
            status = (await tool_client.call_tool("status", {"session_id": sid})).structured_content
            stub.configure(latency_ms=0)
            resumed = await tool_client.call_tool("resume", {"session_id": sid})

    assert task.status == "cancelled"
    assert run["status"] == "cancelled" and run["error"]["code"] == "cancelled"
    assert cancel_latency < 1.0, cancel_latency
    assert status["phase"] == "ready_to_critique"  # at its last checkpoint: the draft
    assert resumed.structured_content["phase"] == "done"  # and it continues from there
    assert [r["node"] for r in stub.requests].count("draft") == 1


def _one_linear_branch(history: dict, loops: int) -> None:
    """Every step of the query exactly once, on one linear branch: draft, then critique/revise per loop."""
    checkpoints = list(reversed(history["checkpoints"]))  # oldest first
    assert all(c["on_head_branch"] for c in checkpoints), [c["branch"] for c in checkpoints]
    assert len({c["parent_id"] for c in checkpoints}) == len(checkpoints)  # no checkpoint has two children
    nodes = [c["node"] for c in checkpoints if c["node"] in ("draft", "critique", "revise")]
    assert nodes == ["draft"] + ["critique", "revise"] * loops, nodes


async def test_kill_9_mid_task_and_restart_the_same_task_id_completes_with_every_step_once(
    pg_url, redis_url, stub, tmp_path
):
    """The killed worker's task is redelivered (Redis) to the restarted server once its 2 s lease lapsed; the task
    body finds its run mid-way and continues it from the last checkpoint: the task id the client holds completes."""
    stub.configure(latency_ms=250, changes=[12])
    loops = 5
    env = server_env(pg_url, stub.base_url, REDRAFT_REDIS_URL=redis_url, REDRAFT_LEASE_TTL_SECONDS="2")
    server = HttpServer(env, log=tmp_path / "server.log").start()
    try:
        async with (
            mcp.Client(server.url, read_timeout_seconds=5, extensions=[TasksOptIn()]) as tasks_client,
            mcp.Client(server.url, read_timeout_seconds=5) as tool_client,
        ):
            sid = (await tool_client.call_tool("create_session", {})).structured_content["session_id"]
            args = {"session_id": sid, "query": "Crash me.", "max_loops": loops, "similarity_threshold": 1.0}
            task_id = (await tasks_client.session.call_tool("refine", args, allow_claimed=True)).task_id
            for _ in range(200):
                run = (await tool_client.call_tool("run_status", {"run_id": task_id})).structured_content
                if run["steps"] >= 4:
                    break
                await asyncio.sleep(0.05)
        server.kill()
        killed = time.monotonic()
        server.start()
        async with (
            mcp.Client(server.url, read_timeout_seconds=5, extensions=[TasksOptIn()]) as tasks_client,
            mcp.Client(server.url, read_timeout_seconds=5) as tool_client,
        ):
            task, _ = await poll(tasks_client, task_id, within=60)
            recovered = time.monotonic() - killed
            run = (await tool_client.call_tool("run_status", {"run_id": task_id})).structured_content
            history = (await tool_client.call_tool("history", {"session_id": sid, "limit": 100})).structured_content
    finally:
        server.stop()
    assert task.status == "completed" and not task.result.get("isError"), task
    assert task.result["structuredContent"]["phase"] == "done"
    assert len(task.result["structuredContent"]["slot"]["revision"]) == loops
    assert run["status"] == "succeeded" and run["attempts"] >= 2
    assert len(stub.prompts("draft")) == 1  # never started over
    _one_linear_branch(history, loops)
    assert recovered < 2 + 10 + 5, recovered  # redelivered within 10 s of the lease lapsing, then ~7 steps


async def test_two_replicas_task_created_on_a_is_polled_and_cancelled_through_b(pg_url, redis_url, stub, tmp_path):
    stub.configure(latency_ms=1000, changes=[12])
    env = server_env(pg_url, stub.base_url, REDRAFT_REDIS_URL=redis_url)
    a = HttpServer(env, log=tmp_path / "a.log").start()
    b = HttpServer(env, log=tmp_path / "b.log").start()
    try:
        async with (
            mcp.Client(a.url, read_timeout_seconds=5, extensions=[TasksOptIn()]) as on_a,
            mcp.Client(b.url, read_timeout_seconds=5, extensions=[TasksOptIn()]) as on_b,
        ):
            sid = (await on_a.call_tool("create_session", {})).structured_content["session_id"]
            args = {"session_id": sid, "query": "Across replicas.", "max_loops": 10, "similarity_threshold": 1.0}
            task_id = (await on_a.session.call_tool("refine", args, allow_claimed=True)).task_id
            messages = []
            for _ in range(100):  # the status message, whichever replica's worker runs the task, read through B
                task = await get_task(on_b, task_id)
                messages.append(task.status_message)
                if len({m for m in messages if m and "done" in m}) >= 2:
                    break
                await asyncio.sleep(0.2)
            assert task.status == "working" and len({m for m in messages if m}) >= 2, messages
            await asyncio.sleep(0.3)  # in the middle of a 1 s model call
            started = time.monotonic()
            await cancel_task(on_b, task_id)
            for _ in range(100):
                run = (await on_b.call_tool("run_status", {"run_id": task_id})).structured_content
                if run["status"] != "running":
                    break
                await asyncio.sleep(0.02)
            latency = time.monotonic() - started
            task = await get_task(on_a, task_id)
    finally:
        a.stop()
        b.stop()
    assert task.status == "cancelled" and run["status"] == "cancelled"
    assert latency < 1.0, latency


async def test_wait_run_on_replica_b_streams_progress_notifications_of_a_run_on_a(pg_url, redis_url, stub, tmp_path):
    """Progress travels on the Redis bus: a client long-polling replica B gets MCP progress notifications (each step,
    and tokens so far within one) of a run that replica A's worker runs."""
    stub.configure(latency_ms=400, changes=[12])
    env = server_env(pg_url, stub.base_url, REDRAFT_REDIS_URL=redis_url)
    a = HttpServer(env, log=tmp_path / "a.log").start()
    b = HttpServer(env, log=tmp_path / "b.log").start()
    notes = []
    call = [0]

    async def on_progress(progress, total, message):
        notes.append((call[0], progress, total, message))

    try:
        async with (
            mcp.Client(a.url, read_timeout_seconds=5) as on_a,
            mcp.Client(b.url, read_timeout_seconds=5) as on_b,
        ):
            sid = (await on_a.call_tool("create_session", {})).structured_content["session_id"]
            args = {"session_id": sid, "query": "Stream it.", "max_loops": 3, "similarity_threshold": 1.0}
            run_id = (await on_a.call_tool("start_refine", args)).structured_content["run_id"]
            for call[0] in range(10):
                view = (
                    await on_b.call_tool("wait_run", {"run_id": run_id, "timeout_s": 4}, progress_callback=on_progress)
                ).structured_content
                if not view["timed_out"]:
                    break
    finally:
        a.stop()
        b.stop()
    assert view["status"] == "succeeded", view
    messages = [m for _, _, _, m in notes]
    steps = [m for m in messages if " done (loop " in m]
    assert len(steps) >= 6, messages  # draft + 3 x (critique, revise): one notification per step, lost ones aside
    assert any("tokens so far" in m for m in messages), messages
    for n in {c for c, _, _, _ in notes}:  # within each call, progress grows with every notification
        values = [p for c, p, _, _ in notes if c == n]
        assert all(x < y for x, y in itertools.pairwise(values)), values


async def test_cancel_run_on_a_task_id_stops_the_task_mid_model_call(pg_url, redis_url, stub):
    """The plain tool view cancels the task view's run: cancel_run(task_id) stops it within 1 s, model call included,
    and the task reads cancelled."""
    stub.configure(latency_ms=1500, changes=[12])
    with http_server(server_env(pg_url, stub.base_url, REDRAFT_REDIS_URL=redis_url)) as server:
        async with (
            mcp.Client(server.url, read_timeout_seconds=5, extensions=[TasksOptIn()]) as tasks_client,
            mcp.Client(server.url, read_timeout_seconds=5) as tool_client,
        ):
            sid = (await tool_client.call_tool("create_session", {})).structured_content["session_id"]
            args = {"session_id": sid, "query": "Cancel me too.", "max_loops": 3, "similarity_threshold": 1.0}
            task_id = (await tasks_client.session.call_tool("refine", args, allow_claimed=True)).task_id
            for _ in range(200):  # until the draft committed and the critique's model call is in flight
                if len(stub.requests) >= 2:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            started = time.monotonic()
            await tool_client.call_tool("cancel_run", {"run_id": task_id})
            for _ in range(100):
                run = (await tool_client.call_tool("run_status", {"run_id": task_id})).structured_content
                if run["status"] != "running":
                    break
                await asyncio.sleep(0.02)
            latency = time.monotonic() - started
            await asyncio.sleep(0.5)
            task = await get_task(tasks_client, task_id)
            requests = len(stub.requests)
    assert run["status"] == "cancelled" and task.status == "cancelled", (run["status"], task.status)
    assert latency < 1.0, latency
    assert requests == 2  # nothing ran after the cancel


async def test_a_task_with_a_bad_session_ends_with_the_error_and_leaves_no_run(pg_url, redis_url, stub):
    with http_server(server_env(pg_url, stub.base_url, REDRAFT_REDIS_URL=redis_url)) as server:
        async with mcp.Client(server.url, read_timeout_seconds=5, extensions=[TasksOptIn()]) as client:
            bogus = "00000000-0000-4000-8000-000000000000"
            args = {"session_id": bogus, "query": "Nobody's.", "max_loops": 1}
            task_id = (await client.session.call_tool("refine", args, allow_claimed=True)).task_id
            task, _ = await poll(client, task_id, within=30)
            status = await client.call_tool("run_status", {"run_id": task_id})
    assert task.status == "completed" and task.result["isError"] is True
    assert task.result["content"][0]["text"].startswith("invalid_session: ")
    assert status.is_error and status.content[0].text.startswith("not_found: ")
    assert stub.requests == []
