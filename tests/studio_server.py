"""A real ``langgraph dev`` (LangGraph Studio's local Agent Server) for tests, serving this repo's ``langgraph.json``.

It runs in a temporary directory, so its ``.langgraph_api/`` state never lands in the repo: the config there is the
repo's own with its graph paths made absolute (and no ``env`` file: the test's environment is the server's). Started
in its own process group and ended with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
LANGGRAPH = str(Path(sys.executable).with_name("langgraph"))


def studio_config(directory: Path) -> Path:
    """The repo's langgraph.json, rewritten to work from ``directory``."""
    config = json.loads((ROOT / "langgraph.json").read_text())
    config.pop("env", None)
    config["dependencies"] = [str(ROOT / dep) for dep in config.get("dependencies", [])]
    graphs = {}
    for name, spec in config["graphs"].items():
        path = spec["path"] if isinstance(spec, dict) else spec
        absolute = str((ROOT / path.split(":", 1)[0]).resolve()) + ":" + path.split(":", 1)[1]
        graphs[name] = {**spec, "path": absolute} if isinstance(spec, dict) else absolute
    config["graphs"] = graphs
    target = directory / "langgraph.json"
    target.write_text(json.dumps(config))
    return target


def studio_env(base_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDRAFT_", "LANGSMITH_", "LANGCHAIN_", "OPENAI_"))}
    env.update(
        REDRAFT_BASE_URL=base_url,
        REDRAFT_MODEL="stub-model",
        REDRAFT_MAX_RETRIES="0",
        LANGSMITH_TRACING="false",
        LANGGRAPH_NO_VERSION_CHECK="true",
        LANGGRAPH_CLI_NO_ANALYTICS="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def langgraph_dev(directory: Path, env: dict[str, str], python: str | None = None) -> Iterator[str]:
    """``langgraph dev --no-browser --port <free>`` on this repo's graph; yields its URL."""
    port = free_port()
    command = [python, "-m", "langgraph_cli"] if python else [LANGGRAPH]
    command += ["dev", "--no-browser", "--no-reload", "--port", str(port), "--config", str(studio_config(directory))]
    log = directory / "langgraph-dev.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(command, cwd=directory, env=env, stdout=out, stderr=out, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"langgraph dev exited with {proc.returncode}: {log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"langgraph dev did not answer within 90 s: {log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def server_log(directory: Path) -> str:
    path = directory / "langgraph-dev.log"
    return path.read_text(errors="replace") if path.exists() else ""
