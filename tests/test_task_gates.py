"""Step-mode gates inside MCP background tasks: a gate parks the task in input_required (no worker waits), answered
by tasks/update, by a tool client's resume, or transparently by fastmcp.Client's elicitation handler."""

from __future__ import annotations

import mcp

from tests.servers import http_server, server_env
from tests.task_client import TERMINAL, TasksOptIn, never_called, only_request, poll, update_task


async def test_step_mode_gates_are_input_required_answered_by_tasks_update_or_by_resume(pg_url, redis_url, stub):
    """A step-mode refine as a task parks at each gate (input_required; no worker waits). The task client answers one
    gate with tasks/update; a tool client sees run_status = interrupted with the pending gate and answers the next
    with resume. Both answers resume the same run, and the task completes with the finished thread."""
    stub.configure(draft_words=30, critique_words=5)
    with http_server(server_env(pg_url, stub.base_url, REDRAFT_REDIS_URL=redis_url)) as server:
        async with (
            mcp.Client(
                server.url, read_timeout_seconds=5, extensions=[TasksOptIn()], elicitation_callback=never_called
            ) as tasks_client,
            mcp.Client(server.url, read_timeout_seconds=5) as tool_client,
        ):
            sid = (await tool_client.call_tool("create_session", {})).structured_content["session_id"]
            args = {"session_id": sid, "companion": "summary", "query": "Summarise durable runs.", "max_loops": 1}
            created = await tasks_client.session.call_tool("refine", args, allow_claimed=True)
            task_id = created.task_id

            task, _ = await poll(tasks_client, task_id, until=("input_required", *TERMINAL), within=30)
            key, request = only_request(task)
            assert request["method"] == "elicitation/create"
            schema = request["params"]["requestedSchema"]
            assert schema["properties"]["action"]["enum"] == ["approve", "replace"]
            assert "before critique" in request["params"]["message"]
            run = (await tool_client.call_tool("run_status", {"run_id": task_id})).structured_content
            assert run["status"] == "interrupted" and run["pending_gate"]["gate"] == "critique"
            assert run["pending_gate"]["choices"] == ["approve", "replace"]
            requests_before = len(stub.requests)

            # a bad answer is refused with a clear reason and asked again; nothing ran
            await update_task(tasks_client, task_id, key, {"action": "delete"})
            task, _ = await poll(tasks_client, task_id, until=("input_required", *TERMINAL), within=30)
            key, request = only_request(task)
            assert request["params"]["message"].startswith("invalid_input: A critique decision must be one of")
            assert len(stub.requests) == requests_before

            # the task client answers the critique gate: the run writes that critique and parks at the revise gate
            await update_task(tasks_client, task_id, key, {"action": "replace", "text": "Say what survives a crash."})
            task, _ = await poll(tasks_client, task_id, until=("input_required", *TERMINAL), within=30)
            _, request = only_request(task)
            assert "before revise" in request["params"]["message"]
            choices = request["params"]["requestedSchema"]["properties"]["action"]["enum"]
            assert choices == ["approve", "edit", "replace"]
            assert len(stub.requests) == requests_before  # a replaced critique asks the model nothing

            # the tool client sees the same run interrupted at the revise gate and answers it with resume
            run = (await tool_client.call_tool("run_status", {"run_id": task_id})).structured_content
            assert run["status"] == "interrupted" and run["pending_gate"]["gate"] == "revise"
            assert run["pending_gate"]["choices"] == ["approve", "edit", "replace"]
            done = await tool_client.call_tool("resume", {"session_id": sid, "companion": "summary"})
            assert done.structured_content["phase"] == "done"

            task, _ = await poll(tasks_client, task_id, within=30)
            run = (await tool_client.call_tool("run_status", {"run_id": task_id})).structured_content

    assert task.status == "completed" and not task.result.get("isError"), task
    view = task.result["structuredContent"]
    assert view["phase"] == "done" and view["slot"]["critique"] == ["Say what survives a crash."]
    assert len(view["slot"]["revision"]) == 1
    assert run["status"] == "succeeded" and run["attempts"] >= 3  # one run, resumed at each gate
    assert [r["node"] for r in stub.requests] == ["draft", "revise"]


async def test_zero_config_fastmcp_client_drives_step_mode_gates_through_its_elicitation_handler(tmp_path, stub):
    """No Redis (in-process queue): fastmcp.Client opts in to tasks and answers each input_required gate with its
    elicitation handler, transparently, until the step-mode refine is done."""
    from fastmcp import Client

    from redraft.server.app import create_server
    from tests.conftest import make_settings

    stub.configure(draft_words=20, critique_words=5)
    asked = []

    async def handler(message, response_type, params, context):
        asked.append((message, params.requested_schema["properties"]["action"]["enum"]))
        if "before critique" in message:
            return {"action": "replace", "text": "Shorter, please."}
        return {"action": "approve"}

    server = create_server(make_settings(str(tmp_path / "t.sqlite"), stub))
    async with Client(server, elicitation_handler=handler) as client:
        sid = (await client.call_tool("create_session", {})).structured_content["session_id"]
        args = {"session_id": sid, "companion": "summary", "query": "Summarise.", "max_loops": 2}
        result = (await client.call_tool("refine", args)).structured_content
    assert result["phase"] == "done" and result["stop_reason"] == "max_loops"
    assert [enum for _, enum in asked] == [["approve", "replace"], ["approve", "edit", "replace"]] * 2
    assert result["slot"]["critique"] == ["Shorter, please."] * 2
    assert [r["node"] for r in stub.requests] == ["draft", "revise", "revise"]
