"""The one validated text type at the MCP edge: size limits from the settings, NUL and lone surrogates refused, one
line ``invalid_input: <field>: <reason>`` for every refused argument, and nothing changed by a refused call."""

from __future__ import annotations

import pytest
from fastmcp.exceptions import ToolError

from redraft.server.app import create_server
from tests.clients import PlainClient as Client
from tests.conftest import make_settings

BIG = "x" * 3_000_000


async def _threads(client: Client, sid: str) -> list:
    """Everything a refused call must leave alone: both threads' views and the whole generic history."""
    views = []
    for companion in ("generic", "summary"):
        data = (await client.call_tool("status", {"session_id": sid, "companion": companion})).structured_content
        views.append({k: v for k, v in data.items() if k not in ("duration_s", "suggestions")})
        views.append((await client.call_tool("history", {"session_id": sid, "companion": companion})).data)
    return views


async def _refused(client: Client, tool: str, args: dict) -> str:
    with pytest.raises(ToolError) as refused:
        await client.call_tool(tool, args)
    message = str(refused.value)
    assert "\n" not in message and len(message) < 300, message
    return message


async def test_resume_decisions_and_checkpoint_ids_are_refused_at_the_edge(db_url, stub):
    """Step-mode decisions with a 3 MB text, a NUL or a lone surrogate, and checkpoint ids with NUL, used to end in
    internal_error (or be stored); now each is invalid_input naming the field, and nothing changes."""
    stub.configure(draft_words=20, critique_words=5)
    async with Client(create_server(make_settings(db_url, stub))) as client:
        sid = (await client.call_tool("create_session", {})).structured_content["session_id"]
        await client.call_tool("refine", {"session_id": sid, "query": "Seed.", "max_loops": 1})
        gate = await client.call_tool("refine", {"session_id": sid, "companion": "summary", "query": "Summarise."})
        assert gate.structured_content["pending_gate"]["gate"] == "critique"
        page = (await client.call_tool("history", {"session_id": sid})).structured_content
        checkpoint = page["checkpoints"][1]["checkpoint_id"]
        before = await _threads(client, sid)

        at_gate = {"session_id": sid, "companion": "summary"}
        cases = [
            ({"action": "replace", "text": BIG}, "decision.text: String should have at most 100000 characters"),
            ({"action": "replace", "text": "a\x00b"}, "decision.text: contains a NUL character"),
            ({"action": "replace", "text": "ok\ud800"}, "decision.text: "),
            ({"action": "replace", "text": "  "}, "decision.text: must not be blank"),
            ({"action": "edit", "critique": "c\x00"}, "decision.critique: contains a NUL character"),
            ({"action": "approve", "extra": 1}, "decision.extra: Extra inputs are not permitted"),
            ({"action": "delete"}, "decision.action: Input should be 'approve', 'edit' or 'replace'"),
        ]
        for decision, expected in cases:
            message = await _refused(client, "resume", {**at_gate, "decision": decision})
            assert message.startswith(f"invalid_input: {expected}"), message
        for tool, args in [
            ("state_at", {"checkpoint_id": checkpoint + "\x00"}),
            ("fork", {"checkpoint_id": "\x00" + checkpoint, "critique": "Better."}),
            ("replay", {"checkpoint_id": checkpoint + "\x00"}),
            ("diff", {"from_version": 0, "to_version": 1, "checkpoint_id": checkpoint + "\x00"}),
        ]:
            message = await _refused(client, tool, {"session_id": sid, **args})
            assert message == "invalid_input: checkpoint_id: contains a NUL character", message
        message = await _refused(client, "history", {"session_id": sid, "before": checkpoint + "\x00"})
        assert message == "invalid_input: before: contains a NUL character", message
        message = await _refused(client, "fork", {"session_id": sid, "checkpoint_id": checkpoint, "critique": BIG})
        assert message == "invalid_input: critique: String should have at most 100000 characters", message
        assert await _threads(client, sid) == before  # nothing changed

        done = await client.call_tool("resume", {**at_gate, "decision": {"action": "replace", "text": "Mine."}})
        assert done.structured_content["slot"]["critique"] == ["Mine."]  # a good decision still goes through


async def test_out_of_range_numbers_and_wrong_types_get_one_line(tmp_path, stub):
    server = create_server(make_settings(str(tmp_path / "v.sqlite"), stub, max_query_chars=50))
    async with Client(server) as client:
        sid = (await client.call_tool("create_session", {})).structured_content["session_id"]
        await client.call_tool("draft", {"session_id": sid, "query": "Seed."})
        before = await _threads(client, sid)
        new = {"session_id": sid, "query": "Another."}
        for tool, args, expected in [
            ("refine", {**new, "max_loops": 0}, "max_loops: Input should be greater than or equal to 1 (got 0)"),
            ("refine", {**new, "max_loops": "many"}, "max_loops: Input should be a valid integer"),
            ("draft", {**new, "similarity_threshold": 7}, "similarity_threshold: Input should be less than or equal"),
            ("draft", {**new, "sampling": {"temperature": 9}}, "sampling.temperature: Input should be less than"),
            ("draft", {**new, "sampling": {"model": "m\x00"}}, "sampling.model: contains a NUL character"),
            ("draft", {**new, "sampling": {"api_key": "k"}}, "sampling.api_key: Extra inputs are not permitted"),
            ("draft", {"session_id": sid, "query": "q" * 51}, "query: String should have at most 50 characters"),
            ("draft", {"session_id": sid, "query": 5}, "query: Input should be a valid string"),
            ("draft", {"session_id": sid}, "query: Missing required argument"),
            ("critique", {"session_id": sid, "text": "\x00"}, "text: contains a NUL character"),
            ("revise", {"session_id": sid, "critique": "\ud800"}, "critique: "),
            ("status", {"session_id": sid, "companion": "gen\x00eric"}, "companion: contains a NUL character"),
            ("history", {"session_id": sid, "limit": 0}, "limit: Input should be greater than or equal to 1 (got 0)"),
            ("diff", {"session_id": sid, "from_version": -1, "to_version": 0}, "from_version: Input should be"),
            ("list_sessions", {"limit": 10**6}, "limit: Input should be less than or equal to 1000 (got 1000000)"),
            ("status", {"session_id": sid, "bogus\nkey": 1}, "'bogus\\nkey': Unexpected keyword argument"),
        ]:
            message = await _refused(client, tool, args)
            assert message.startswith(f"invalid_input: {expected}"), (tool, message)
        message = await _refused(client, "refine", {**new, "max_loops": 0, "similarity_threshold": -1})
        assert message.count("invalid_input") == 1 and "max_loops" in message and "similarity_threshold" in message
        assert await _threads(client, sid) == before

        tools = {t.name: t.input_schema for t in await client.list_tools()}
        assert tools["draft"]["properties"]["query"]["maxLength"] == 50  # the limit comes from the settings
