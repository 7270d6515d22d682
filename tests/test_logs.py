"""Errors in the server log and on the wire: an expected error is one log line with its code and no traceback, an
unexpected one keeps its traceback; resource errors carry MCP's codes; a database driver's error that nothing
translated still reaches the client as storage_error."""

from __future__ import annotations

import logging
import re
import sqlite3

import psycopg
import pytest
from fastmcp import FastMCP
from fastmcp.exceptions import McpError, ToolError

from redraft.server.middleware import guard
from tests.clients import PlainClient as Client
from tests.servers import HttpServer, server_env


async def test_expected_errors_log_one_line_and_resources_use_mcp_codes(tmp_path, stub):
    log_path = tmp_path / "server.log"
    env = server_env(str(tmp_path / "logs.sqlite"), stub.base_url)
    env["REDRAFT_LOG_LEVEL"] = "DEBUG"
    server = HttpServer(env, log=log_path).start()
    codes: dict[str, int] = {}
    try:
        async with Client(server.url) as client:
            sid = (await client.call_tool("create_session", {})).structured_content["session_id"]
            base = f"redraft://sessions/{sid}"
            for name, uri in [
                ("not_found", f"{base}/generic/latest_critique"),
                ("invalid_session", "redraft://sessions/00000000-0000-0000-0000-000000000000/generic/run_log"),
                ("unknown_companion", f"{base}/nobody/run_log"),
            ]:
                with pytest.raises(McpError) as missing:
                    await client.read_resource(uri)
                assert str(missing.value).startswith(f"{name}: "), str(missing.value)
                codes[name] = missing.value.error.code
            for tool, args, code in [
                ("revise", {"session_id": sid}, "wrong_phase"),
                ("refine", {"session_id": sid, "query": "q", "max_loops": 0}, "invalid_input"),
                ("state_at", {"session_id": sid, "checkpoint_id": "1f0-missing"}, "checkpoint_not_found"),
            ]:
                with pytest.raises(ToolError, match=f"^{code}: "):
                    await client.call_tool(tool, args)
    finally:
        server.stop()
    assert codes == dict.fromkeys(codes, -32002)  # MCP: resource not found
    log = log_path.read_text(errors="replace")
    assert "DEBUG" in log  # the checks below read the most verbose log
    assert "Traceback" not in log, log[-3000:]
    for code in ("not_found", "invalid_session", "unknown_companion", "wrong_phase", "invalid_input"):
        lines = [line for line in log.splitlines() if re.search(rf"(?<![a-z_]){code}: ", line)]
        assert len(lines) == 1, (code, lines)
        assert "redraft.server" in lines[0]
    assert sum("checkpoint_not_found: " in line for line in log.splitlines()) == 1
    assert "Invalid arguments for tool" not in log  # FastMCP's own line for the refused max_loops is not repeated


def _app() -> FastMCP:
    """Tools that fail the way a bug or an untranslated database error would, through the real guard."""
    mcp = FastMCP("failing")

    @mcp.tool
    @guard()
    async def buggy() -> str:
        return {}["missing"]

    @mcp.tool
    @guard()
    async def sqlite_locked(path: str) -> str:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            conn.execute("CREATE TABLE t (x)")  # a read-only database refuses the write
        return "written"

    @mcp.tool
    @guard()
    async def postgres_refused(url: str) -> str:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            await conn.execute("SELECT 1 / 0")
        return "divided"

    @mcp.resource("test://broken/{name}")
    @guard(__import__("fastmcp").exceptions.ResourceError)
    async def broken(name: str) -> str:
        raise RuntimeError(f"bug while reading {name}")

    return mcp


async def test_unexpected_errors_keep_their_traceback_and_database_errors_are_storage_errors(tmp_path, pg_url, caplog):
    path = tmp_path / "ro.sqlite"
    sqlite3.connect(path).close()
    with caplog.at_level(logging.INFO, logger="redraft.server"):
        async with Client(_app()) as client:
            with pytest.raises(ToolError, match=r"^internal_error: the server failed unexpectedly"):
                await client.call_tool("buggy", {})
            with pytest.raises(McpError) as resource:
                await client.read_resource("test://broken/x")
            assert resource.value.error.code == -32603 and str(resource.value).startswith("internal_error: ")
            for tool, args, driver in [
                ("sqlite_locked", {"path": str(path)}, "OperationalError"),
                ("postgres_refused", {"url": pg_url}, "DivisionByZero"),
            ]:
                with pytest.raises(ToolError) as refused:
                    await client.call_tool(tool, args)
                assert str(refused.value) == (
                    f"storage_error: The database failed ({driver}); nothing was changed. (retryable)"
                )
    unexpected = [r for r in caplog.records if r.getMessage().startswith("unexpected error in")]
    assert [r.getMessage() for r in unexpected] == ["unexpected error in buggy", "unexpected error in broken"]
    assert all(r.exc_info and r.levelno == logging.ERROR for r in unexpected)  # the traceback is kept
