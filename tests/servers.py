"""Real ``redraft serve`` subprocesses for tests: HTTP on a free port, or stdio parameters; and an in-process HTTP
server for a FastMCP app built in the test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

REDRAFT = str(Path(sys.executable).with_name("redraft"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(db_url: str, base_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDRAFT_")}
    env.update(
        REDRAFT_DATABASE_URL=db_url,
        REDRAFT_BASE_URL=base_url,
        REDRAFT_MODEL="stub-model",
        REDRAFT_MAX_RETRIES="0",
        REDRAFT_LOG_LEVEL="WARNING",
    )
    env.update(extra)
    return env


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            detail = proc.stderr.read().decode()[-2000:] if proc.stderr else "(see its log file)"
            raise RuntimeError(f"server exited with {proc.returncode}: {detail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"server did not listen on {port} within {timeout}s")


class HttpServer:
    def __init__(self, env: dict[str, str], port: int | None = None, log: Path | None = None) -> None:
        self.env = env
        self.port = port or free_port()
        self.log = log  # stderr goes here (appended) instead of a pipe
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> HttpServer:
        stderr = self.log.open("ab") if self.log else subprocess.PIPE
        self.proc = subprocess.Popen(
            [REDRAFT, "serve", "--transport", "http", "--port", str(self.port)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        if self.log:
            stderr.close()
        wait_for_port(self.port, self.proc)
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, no graceful shutdown -- a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.contextmanager
def http_server(env: dict[str, str]) -> Iterator[HttpServer]:
    server = HttpServer(env).start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def serve_in_process(mcp) -> AsyncIterator[str]:
    """Serve a FastMCP app over streamable HTTP with uvicorn in this event loop; yields its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(mcp.http_app(path="/mcp"), host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(200):
            if server.started:
                break
            if task.done():
                task.result()  # raises what stopped it
            await asyncio.sleep(0.025)
        else:
            raise TimeoutError("in-process server did not start")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        await task
