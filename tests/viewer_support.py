"""What the viewer's tests share: a ``redraft ui`` (or ``serve``) subprocess, and MCP calls to make its sessions."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.clients import PlainClient
from tests.servers import REDRAFT, free_port, wait_for_port


class Viewer:
    """A ``redraft ui`` (or ``redraft serve --transport http``) subprocess and its first line of output."""

    def __init__(self, env: dict[str, str], log: Path, command: str = "ui") -> None:
        self.port = free_port()
        args = ["ui", "--port", str(self.port)] if command == "ui" else ["serve", "--transport", "http"]
        args += [] if command == "ui" else ["--port", str(self.port)]
        self.proc = subprocess.Popen([REDRAFT, *args], env=env, stdout=subprocess.PIPE, stderr=log.open("ab"))
        self.link = self.proc.stdout.readline().decode().strip() if command == "ui" else ""
        wait_for_port(self.port, self.proc)
        self.base = f"http://127.0.0.1:{self.port}"

    @property
    def mcp(self) -> str:
        return f"{self.base}/mcp"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


async def tool(url: str, name: str, **arguments) -> dict:
    async with PlainClient(url) as client:
        return (await client.call_tool(name, arguments)).structured_content


async def session_with_refine(url: str, companion: str = "generic", **options) -> str:
    sid = (await tool(url, "create_session"))["session_id"]
    await tool(url, "refine", session_id=sid, companion=companion, query="Explain write-ahead logging.", **options)
    return sid


async def history(url: str, sid: str, companion: str = "generic") -> list[dict]:
    return (await tool(url, "history", session_id=sid, companion=companion, limit=200))["checkpoints"]
