"""The `redraft` command's conventions, as a user's shell sees them (real subprocesses, a real pseudo-terminal):
what start-up imports, --version and `python -m redraft`, exit codes, JSON errors, width and colour."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import re
import struct
import sys
import termios

import pytest

from redraft import __version__
from tests.servers import REDRAFT, server_env

HEAVY = ("langgraph", "langchain", "fastmcp")
BAD_SETTING = {"REDRAFT_COMPANIONS__CODE__MAX_LOOPS": "0"}  # an error that needs no database: a quick subprocess
BAD_MESSAGE = "REDRAFT_COMPANIONS__CODE__MAX_LOOPS: Input should be greater than or equal to 1"


async def proc(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    p = await asyncio.create_subprocess_exec(
        *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(p.communicate(), 120)
    return p.returncode, stdout.decode(), stderr.decode()


def imported(importtime_log: str) -> set[str]:
    """Top-level packages a `python -X importtime` run imported."""
    names = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)$", importtime_log, re.M)
    return {name.split(".")[0] for name in names}


def colours(text: str) -> list[str]:
    """The colour SGR codes (foreground/background) in ``text``; bold and the like are not colour."""
    found = []
    for params in re.findall(r"\x1b\[([\d;]*)m", text):
        codes = [int(c) for c in params.split(";") if c]
        found += [str(c) for c in codes if 30 <= c <= 49 or 90 <= c <= 107]
    return found


def on_tty(*args: str, env: dict[str, str], columns: int = 60) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal ``columns`` wide; what the terminal showed."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.setsid()
        os.dup2(follower, 1)
        os.dup2(follower, 2)
        os.execve(args[0], list(args), env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode()


@pytest.fixture
def env(tmp_path, stub):
    base = server_env(str(tmp_path / "cli.sqlite"), stub.base_url)
    base.pop("COLUMNS", None)
    for name in ("NO_COLOR", "FORCE_COLOR", "TERMINAL_WIDTH"):
        base.pop(name, None)
    return base


async def test_start_up_imports_only_what_the_command_needs(env):
    # --help and --version load Typer (and Rich for the help), never the graph, LangChain or FastMCP
    help_run, version_run, run_run = await asyncio.gather(
        proc(sys.executable, "-X", "importtime", REDRAFT, "--help", env=env),
        proc(sys.executable, "-X", "importtime", REDRAFT, "--version", env=env),
        proc(sys.executable, "-X", "importtime", REDRAFT, "run", "Explain fsync.", "--json", env=env),
    )
    code, out, err = help_run
    assert code == 0 and "Usage: redraft" in out
    assert "typer" in imported(err) and not imported(err) & set(HEAVY), imported(err) & set(HEAVY)
    code, out, err = version_run
    assert code == 0 and out == f"redraft {__version__}\n"
    assert "typer" in imported(err) and not {"rich", *HEAVY} & imported(err)
    # `run` needs the graph and LangChain, but not FastMCP
    code, out, err = run_run
    assert code == 0 and json.loads(out)["phase"] == "done"
    modules = imported(err)
    assert {"langgraph", "langchain_openai"} <= modules and "fastmcp" not in modules and "mcp" not in modules


async def test_python_m_version_and_documented_exit_codes(env):
    code, out, _ = await proc(sys.executable, "-m", "redraft", "--version", env=env)
    assert code == 0 and out == f"redraft {__version__}\n"
    code, out, _ = await proc(REDRAFT, "--help", env={**env, "COLUMNS": "200"})
    assert code == 0
    assert "Exit codes: 0 ok · 1 run failed · 2 usage" in out and "3 storage unavailable · 130 interrupted" in out
    code, _, err = await proc(REDRAFT, "no-such-command", env=env)
    assert code == 2 and "No such command" in err


async def test_output_to_a_pipe_is_never_cut_and_errors_follow_json(env):
    long_model = "a-model-name-" + "x" * 150  # far wider than the 80 columns a pipe used to get
    (code, out, _), (err_code, err_out, err) = await asyncio.gather(
        proc(REDRAFT, "config", env={**env, "REDRAFT_MODEL": long_model}),
        proc(REDRAFT, "config", "--json", env={**env, **BAD_SETTING}),
    )
    assert code == 0
    assert any(long_model in line for line in out.splitlines()), out
    assert "…" not in out
    # with --json an error is one JSON object on stderr, with its code; the exit code still says what failed
    assert err_code == 2 and err_out == ""
    assert json.loads(err) == {"error": "config_error", "message": f"Invalid settings: {BAD_MESSAGE}"}


async def test_terminal_width_and_colour(env):
    def tty(*args: str, **extra: str) -> tuple[int, str]:
        return on_tty(REDRAFT, *args, env={**env, **extra})

    # on a terminal, tables fit its width; colour, unless NO_COLOR is set or --no-color is given (anywhere on the
    # line), help included
    table, plain, no_color_env, no_color_flag, help_no_color = await asyncio.gather(
        asyncio.to_thread(tty, "config"),
        asyncio.to_thread(tty, "config", **BAD_SETTING),
        asyncio.to_thread(tty, "config", NO_COLOR="1", **BAD_SETTING),
        asyncio.to_thread(tty, "config", "--no-color", **BAD_SETTING),
        asyncio.to_thread(tty, "--no-color", "--help"),
    )
    code, shown = table
    assert code == 0 and "REDRAFT_MODEL" in shown
    assert max(len(line) for line in re.sub(r"\x1b\[[\d;]*m", "", shown).splitlines()) <= 60
    assert plain[0] == 2 and "Invalid settings" in plain[1] and colours(plain[1])
    for code, shown in (no_color_env, no_color_flag):
        assert code == 2 and "Invalid settings" in shown and not colours(shown), repr(shown)
    assert help_no_color[0] == 0 and "Usage" in help_no_color[1] and not colours(help_no_color[1])
