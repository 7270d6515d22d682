"""An MCP tasks client for the tests (io.modelcontextprotocol/tasks) on the official `mcp` SDK: opt in, then drive a
task with tasks/get, tasks/update and tasks/cancel."""

from __future__ import annotations

import asyncio
import random
import time

import mcp
import mcp_types
from fastmcp.utilities.tasks import TASKS_EXTENSION_ID
from fastmcp_tasks.client_models import (
    CancelTaskRequest,
    CancelTaskRequestParams,
    ClientCreateTaskResult,
    ClientGetTaskResult,
    GetTaskRequest,
    GetTaskRequestParams,
    UpdateTaskRequest,
    UpdateTaskRequestParams,
)
from mcp.client.extension import ClientExtension, ResultClaim

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


async def update_task(client: mcp.Client, task_id: str, key: str, content: dict) -> None:
    answer = mcp_types.ElicitResult(action="accept", content=content).model_dump(by_alias=True, exclude_none=True)
    request = UpdateTaskRequest(params=UpdateTaskRequestParams(task_id=task_id, input_responses={key: answer}))
    await client.session.send_request(request, mcp_types.Result, request_read_timeout_seconds=5)


async def cancel_task(client: mcp.Client, task_id: str) -> None:
    request = CancelTaskRequest(params=CancelTaskRequestParams(task_id=task_id))
    await client.session.send_request(request, mcp_types.Result, request_read_timeout_seconds=5)


async def never_called(context, params):
    raise AssertionError("the test answers gates through tasks/update itself")


_JITTER = random.Random(16)


async def poll(client: mcp.Client, task_id: str, until=TERMINAL, within: float = 120) -> tuple:
    """Poll tasks/get at the advertised interval until the task's status is in ``until``; also return every
    (status, status message) seen."""
    seen = []
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        task = await get_task(client, task_id)
        seen.append((task.status, task.status_message))
        if task.status in until:
            return task, seen
        # at most the advertised interval, and not in lockstep with a stub that answers exactly once a second (a
        # poll phase-locked to the steps would see only one part of each: always "tokens so far", or never)
        await asyncio.sleep((task.poll_interval_ms or 1000) / 1000 * _JITTER.uniform(0.5, 1.0))
    raise AssertionError(f"task {task_id} did not reach {until} in {within}s; saw {seen[-5:]}")


def only_request(task: ClientGetTaskResult) -> tuple[str, dict]:
    assert task.status == "input_required" and len(task.input_requests) == 1, task
    return next(iter(task.input_requests.items()))
