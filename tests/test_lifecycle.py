"""One session lifecycle for the CLI and the server (issue 20 item 4): a CLI session expires after the same TTL as an
MCP session, and its expiry removes its threads and checkpoints even with no server running; CLI runs count in the
learning stats, which are split by companion and by model."""

from __future__ import annotations

import asyncio
import json
import sqlite3

from redraft.graph.checkpointer import open_persistence
from redraft.graph.runner import thread_id_for
from redraft.server.app import create_server
from redraft.server.stats import StatsStore
from tests.clients import PlainClient as Client
from tests.conftest import make_settings
from tests.servers import REDRAFT, server_env


async def redraft(*args: str, env: dict[str, str]) -> dict:
    proc = await asyncio.create_subprocess_exec(
        REDRAFT, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


def count(db_file: str, sql: str, *params: str) -> int:
    with sqlite3.connect(db_file) as conn:
        return conn.execute(sql, params).fetchone()[0]


async def test_cli_sessions_expire_with_their_threads_and_cli_runs_teach_the_stats(tmp_path, stub):
    db_file = str(tmp_path / "cli.sqlite")
    env = server_env(db_file, stub.base_url, REDRAFT_SESSION_TTL_SECONDS="2")
    first = await redraft("run", "Explain WAL.", "--json", env=env)
    thread = thread_id_for(first["session_id"], "generic")
    assert count(db_file, "SELECT count(*) FROM checkpoints WHERE thread_id = ?", thread) > 0
    await asyncio.sleep(2.5)  # idle past the TTL; no server is running on this database

    second = await redraft("run", "Explain fsync.", "--json", "--companion", "code", env=env)
    # the second command deleted the expired session on its way out, with its thread and checkpoints
    assert count(db_file, "SELECT count(*) FROM redraft_sessions WHERE session_id = ?", first["session_id"]) == 0
    assert count(db_file, "SELECT count(*) FROM checkpoints WHERE thread_id = ?", thread) == 0
    assert count(db_file, "SELECT count(*) FROM redraft_sessions WHERE session_id = ?", second["session_id"]) == 1
    # the run's end counts as activity, as an MCP call's end does: a long run does not leave its session looking idle
    sql = "SELECT count(*) FROM redraft_sessions WHERE session_id = ? AND last_accessed > created_at"
    assert count(db_file, sql, second["session_id"]) == 1

    generic, code, *_ = await redraft("stats", "--json", env=env)  # `redraft stats`: every companion, in order
    assert generic["runs"] == 1 and code["runs"] == 1
    assert generic["stop_reasons"] == {"converged": 1}
    assert list(generic["by_model"]) == ["stub-model"] and generic["by_model"]["stub-model"]["runs"] == 1
    assert "refine->done" in generic["transition_seconds"]


async def test_stats_are_split_by_companion_and_model(tmp_path, stub):
    settings = make_settings(str(tmp_path / "models.sqlite"), stub)
    async with Client(create_server(settings)) as client:
        sid = (await client.call_tool("create_session", {})).structured_content["session_id"]
        for model, n in (("model-a", 3), ("model-b", 1)):
            for i in range(n):
                await client.call_tool(
                    "refine",
                    {"session_id": sid, "query": f"Question {model} {i}.", "sampling": {"model": model}},
                )
        await client.call_tool("refine", {"session_id": sid, "companion": "code", "query": "Code question."})
        generic = json.loads((await client.read_resource("redraft://stats/generic"))[0].text)
        code = json.loads((await client.read_resource("redraft://stats/code"))[0].text)
    assert generic["runs"] == 4 and set(generic["by_model"]) == {"model-a", "model-b"}
    a, b = generic["by_model"]["model-a"], generic["by_model"]["model-b"]
    assert a["runs"] == 3 and a["suggestions"]["typical_iterations"] >= 1
    assert b["runs"] == 1 and b["suggestions"] is None and "Not enough data" in b["note"]
    assert code["runs"] == 1 and set(code["by_model"]) == {"stub-model"}

    async with open_persistence(settings) as p:
        only_b = await StatsStore(p.db).summary("generic", model="model-b")
    assert only_b["model"] == "model-b" and only_b["runs"] == 1 and set(only_b["by_model"]) == {"model-b"}
