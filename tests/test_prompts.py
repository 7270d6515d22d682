"""MCP prompts, one per companion: listed with their arguments and rendered by the official `mcp` client over a real
HTTP server, and by fastmcp.Client in process; bad arguments get a clear invalid-params error and nothing else."""

from __future__ import annotations

import logging

import mcp
import pytest
from fastmcp.exceptions import MCPError

from redraft.server.app import create_server
from redraft.server.prompts import PROMPTS
from tests.clients import PlainClient as Client
from tests.conftest import make_settings
from tests.servers import http_server, server_env


async def test_official_client_lists_and_renders_one_prompt_per_companion(tmp_path, stub):
    env = server_env(str(tmp_path / "prompts.sqlite"), stub.base_url)
    with http_server(env) as srv:
        async with mcp.Client(srv.url) as client:
            listed = {p.name: p for p in (await client.list_prompts()).prompts}
            assert set(listed) == {"refine_text", "review_code", "polish_essay", "summarize_text"}
            for name, prompt in listed.items():
                args = {a.name: a for a in prompt.arguments}
                assert set(args) == {"text", "max_loops", "session_id"}
                assert args["text"].required and not args["max_loops"].required
                assert PROMPTS[name][0] in prompt.description

            code = await client.get_prompt("review_code", {"text": "def add(a, b): ...", "max_loops": "3"})
            body = code.messages[0].content.text
            assert code.messages[0].role == "user"
            assert 'companion="code"' in body and "max_loops=3" in body and "create_session" in body
            assert body.endswith("def add(a, b): ...")

            summary = await client.get_prompt("summarize_text", {"text": "Long text.", "session_id": "abc"})
            body = summary.messages[0].content.text
            assert 'Use the redraft session "abc"' in body and "create_session" not in body
            assert "`resume`" in body  # the summary companion is in step mode: the prompt says how to answer gates
            essay = await client.get_prompt("polish_essay", {"text": "Rivers."})
            assert "max_loops=4" in essay.messages[0].content.text  # the companion's default
    assert stub.requests == []  # rendering a prompt calls no model


async def test_bad_prompt_arguments_are_clear_errors_without_a_traceback(tmp_path, stub, caplog):
    settings = make_settings(str(tmp_path / "p.sqlite"), stub, companions={"code": {"max_loops": 9}})
    async with Client(create_server(settings)) as client:
        rendered = await client.get_prompt("review_code", {"text": "x"})
        assert "max_loops=9" in rendered.messages[0].content.text  # operator overrides apply
        caplog.set_level(logging.DEBUG)
        cases = {
            "missing argument text": {},
            "text must not be empty": {"text": "  "},
            "max_loops must be a whole number": {"text": "x", "max_loops": "zero"},
            "max_loops must be from 1 to 50": {"text": "x", "max_loops": "51"},
            "at most 100000": {"text": "x" * 100_001},
        }
        for message, arguments in cases.items():
            with pytest.raises(MCPError, match=f"invalid_input: .*{message}"):
                await client.get_prompt("summarize_text", arguments)
        with pytest.raises(MCPError, match="Unknown prompt"):
            await client.get_prompt("write_poem", {"text": "x"})
    assert not [r for r in caplog.records if r.exc_info], "a refused prompt logged a traceback"
