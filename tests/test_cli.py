"""The `redraft` CLI as a subprocess: exit codes, --json output, clear errors without tracebacks."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.servers import REDRAFT, server_env


async def cli(*args: str, env: dict[str, str], expect: int = 0) -> str:
    proc = await asyncio.create_subprocess_exec(
        REDRAFT, *args, env={**env, "COLUMNS": "200"}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    out, err = stdout.decode(), stderr.decode()
    assert proc.returncode == expect, f"exit {proc.returncode}: {err}"
    assert "Traceback" not in out + err
    return out if expect == 0 else err


@pytest.fixture
def env(tmp_path, stub):
    return server_env(str(tmp_path / "cli.sqlite"), stub.base_url)


async def test_run_then_inspect_fork_and_resume(env, stub):
    result = json.loads(await cli("run", "Explain write-ahead logs.", "--json", env=env))
    assert result["stop_reason"] == "converged" and result["phase"] == "done"
    sid = result["session_id"]
    human = await cli("run", "Now explain fsync.", "--session", sid, env=env)
    assert "── draft ──" in human and "converged" in human  # live step headers and streamed tokens

    sessions = json.loads(await cli("sessions", "--json", env=env))
    assert [s["session_id"] for s in sessions] == [sid]
    page = json.loads(await cli("history", sid, "--json", "--limit", "100", env=env))
    nodes = [e["node"] for e in page["checkpoints"]]
    assert nodes.count("input") == 2 and nodes[0] == "revise"
    critique_cp = next(e for e in page["checkpoints"] if e["node"] == "critique")["checkpoint_id"]

    then = json.loads(await cli("show", sid, "--at", critique_cp, "--json", env=env))
    assert then["phase"] == "needs_revision" and then["slot"]["query"] == "Now explain fsync."
    d = json.loads(await cli("diff", sid, "0", "1", "--json", env=env))
    assert 0 < d["similarity"] < 1 and d["diff"].startswith("--- version 0")

    forked = json.loads(await cli("fork", sid, critique_cp, "--critique", "Round 3: shorter.", "--json", env=env))
    assert forked["slot"]["critique"][-1] == "Round 3: shorter." and forked["next"] == ["revise"]
    resumed = json.loads(await cli("resume", sid, "--json", env=env))
    assert resumed["phase"] == "done"


async def test_companions_and_config(env):
    names = [c["name"] for c in json.loads(await cli("companions", "--json", env=env))]
    assert names == ["generic", "code", "essay", "summary"]
    secret_env = {**env, "REDRAFT_API_KEY": "sk-live-verysecret", "REDRAFT_AUTH_TOKENS": '{"tok-hidden": "alice"}'}
    config = json.loads(await cli("config", "--json", env=secret_env))
    assert config["api_key"] == "****" and config["model"] == "stub-model"
    assert "verysecret" not in json.dumps(config) and "tok-hidden" not in json.dumps(config)
    assert list(config["auth_tokens"].values()) == ["alice"]


async def test_errors_are_clear_with_exit_codes(env, tmp_path):
    err = await cli("show", "not-a-session", env=env, expect=2)
    assert "error: Invalid or unknown session." in err
    err = await cli("run", "q", "--threshold", "2", env=env, expect=2)
    assert "similarity_threshold must be between 0 and 1" in err
    err = await cli("run", "q", "--companion", "poet", env=env, expect=2)
    assert "Known types: code, essay, generic, summary" in err
    pg_down = {**env, "REDRAFT_DATABASE_URL": "postgresql://u:hunter2@127.0.0.1:1/db"}
    err = await cli("sessions", env=pg_down, expect=3)
    assert "Cannot connect to PostgreSQL" in err and "hunter2" not in err
    model_down = {**env, "REDRAFT_BASE_URL": "http://127.0.0.1:1/v1"}
    err = await cli("run", "q", env=model_down, expect=1)  # the run failed
    assert "Cannot reach the model endpoint" in err
    bad_setting = {**env, "REDRAFT_COMPANIONS__CODE__MAX_LOOPS": "0"}
    err = await cli("companions", env=bad_setting, expect=2)  # usage: invalid settings
    assert "REDRAFT_COMPANIONS__CODE__MAX_LOOPS" in err
    err = await cli("resume", "x", "--decision", "{not json", env=env, expect=2)
    assert "not valid JSON" in err
