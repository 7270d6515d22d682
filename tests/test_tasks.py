"""MCP background tasks (io.modelcontextprotocol/tasks) through the official `mcp` SDK client against real
`redraft serve` processes on PostgreSQL and Redis: a long refine survives a 5 s read timeout by task polling."""

from __future__ import annotations

import asyncio
import time

import mcp
from fastmcp.utilities.tasks import TASKS_EXTENSION_ID
from fastmcp_tasks.client_models import (
    ClientCreateTaskResult,
    ClientGetTaskResult,
    GetTaskRequest,
    GetTaskRequestParams,
)
from mcp.client.extension import ClientExtension, ResultClaim

from tests.servers import http_server, server_env

TERMINAL = ("completed", "failed", "cancelled")


class TasksOptIn(ClientExtension):
    """Declares the tasks extension, so the server may answer a tools/call with a task. The test drives the task
    itself (``allow_claimed=True``), so the claim's resolver is never used."""

    identifier = TASKS_EXTENSION_ID

    def settings(self) -> dict:
        return {}

    def claims(self):
        async def unused(result, ctx):
            raise AssertionError("the test polls tasks/get itself")

        return (ResultClaim(result_type="task", model=ClientCreateTaskResult, resolve=unused),)


async def get_task(client: mcp.Client, task_id: str) -> ClientGetTaskResult:
    request = GetTaskRequest(params=GetTaskRequestParams(task_id=task_id))
    return await client.session.send_request(request, ClientGetTaskResult, request_read_timeout_seconds=5)


async def poll(client: mcp.Client, task_id: str, until=TERMINAL, timeout: float = 120) -> tuple[ClientGetTaskResult, list]:
    """Poll tasks/get at the advertised interval until the task's status is in ``until``; also return every
    (status, status message) seen."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = await get_task(client, task_id)
        seen.append((task.status, task.status_message))
        if task.status in until:
            return task, seen
        await asyncio.sleep((task.poll_interval_ms or 1000) / 1000)
    raise AssertionError(f"task {task_id} did not reach {until} in {timeout}s; saw {seen[-5:]}")


async def test_official_sdk_client_with_5s_read_timeout_completes_a_20_step_refine_by_task_polling(
    pg_url, redis_url, stub
):
    # the stub answers one reply per second and never converges: 1 draft + 2 x 10 loops = 21 model replies (~21 s)
    stub.configure(latency_ms=1000, changes=[12])
    with http_server(server_env(pg_url, stub.base_url, REDRAFT_REDIS_URL=redis_url)) as server:
        async with mcp.Client(server.url, read_timeout_seconds=5, extensions=[TasksOptIn()]) as client:
            sid = (await client.call_tool("create_session", {})).structured_content["session_id"]
            args = {"session_id": sid, "query": "Explain durable runs.", "max_loops": 10, "similarity_threshold": 1.0}
            started = time.monotonic()
            created = await client.session.call_tool("refine", args, allow_claimed=True)
            assert isinstance(created, ClientCreateTaskResult) and created.status == "working"
            assert time.monotonic() - started < 1.0
            assert created.poll_interval_ms == 1000

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
    assert any("revise done (loop 10" in m for m in messages) or any("step 2" in m for m in messages), messages
    assert any("tokens so far" in m for m in messages), messages
