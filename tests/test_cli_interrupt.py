"""No dead ends: a `redraft run` that fails or is interrupted says, once, which session it was in and the exact command
that continues it -- and that command does. Real subprocesses, a real SIGINT during a model call."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import signal
import time

from tests.servers import REDRAFT, server_env
from tests.test_cli_conventions import proc


def resume_args(stderr: str) -> list[str]:
    """The command a stopped run printed, as arguments (with this venv's redraft)."""
    lines = [line for line in stderr.splitlines() if "continue it with: " in line]
    assert len(lines) == 1, stderr
    words = shlex.split(lines[0].split("continue it with: ", 1)[1])
    assert words[:2] == ["redraft", "resume"]
    return [REDRAFT, *words[1:]]


async def test_failed_run_prints_its_resume_command_once_and_it_works(tmp_path, stub):
    env = server_env(str(tmp_path / "cli.sqlite"), stub.base_url)
    stub.fail({"status": 500, "node": "critique"})
    code, out, err = await proc(REDRAFT, "run", "Explain fsync.", "--companion", "essay", env=env)
    assert code == 1 and "Traceback" not in err, err
    assert err.count("The model endpoint answered HTTP 500 to the critique request") == 1, err
    sid = re.search(r"session (\S+) is saved", err).group(1)
    assert err.count(sid) == 2  # once in the line, once in the command
    assert sid not in out  # all of it on stderr
    args = resume_args(err)
    assert args[1:] == ["resume", sid, "--companion", "essay"]

    # the printed command finishes the run; meanwhile, with --json a stopped run says the same as one JSON object
    stub.fail({"status": 500, "node": "draft"})
    (code, out, err), (j_code, j_out, j_err) = await asyncio.gather(
        proc(*args, "--json", env=env), proc(REDRAFT, "run", "Explain WAL.", "--json", env=env)
    )
    assert code == 0, err
    assert json.loads(out)["phase"] == "done"
    assert j_code == 1 and j_out == ""
    stopped = json.loads(j_err)
    assert stopped["error"] == "model_error" and "HTTP 500 to the draft request" in stopped["message"]
    assert stopped["resume_command"] == f"redraft resume {stopped['session_id']}"


async def test_sigint_during_a_model_call_exits_130_quickly_and_the_run_resumes(tmp_path, stub):
    env = server_env(str(tmp_path / "cli.sqlite"), stub.base_url)
    stub.fail({"sleep": 60, "node": "critique"})  # the critique call hangs until the user gives up
    p = await asyncio.create_subprocess_exec(
        REDRAFT, "run", "Explain fsync.", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while not stub.prompts("critique"):
        assert time.monotonic() < deadline and p.returncode is None, "the run never reached the critique call"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # the call is in flight
    p.send_signal(signal.SIGINT)
    sent = time.monotonic()
    stdout, stderr = await asyncio.wait_for(p.communicate(), 30)
    took = time.monotonic() - sent
    err = stderr.decode()
    assert p.returncode == 130, err
    assert took < 1.0, f"exit took {took:.2f}s after SIGINT"  # typically ~0.1 s
    assert "Traceback" not in err and err.count("interrupted") == 1 and "── draft ──" in stdout.decode()

    code, out, err = await proc(*resume_args(err), "--json", env=env)
    assert code == 0, err
    done = json.loads(out)
    assert done["phase"] == "done" and done["stop_reason"] == "converged"
    assert len(stub.prompts("draft")) == 1  # the finished draft was kept, not redone
