"""Benchmark section: time from ``tools/call`` to the first model request, for ``refine`` as an MCP background task
(queue in process, and on Redis) beside the same call answered in the foreground (the baseline).

Measured twice: with the server in a process of its own (as deployed: the client's work is not the server's), and
with client and server sharing one process and event loop (the earlier setup: there a task's client, which polls
``tasks/get`` from the moment it has the task id, spends its CPU in the measured window on the server's one thread).
Stamps are ``time.perf_counter`` (CLOCK_MONOTONIC, one clock for every process of the machine).

Run alone: ``python -m bench.task_latency [-n 30]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
import uuid

from bench.fake import FakeChat, FakeProvider
from bench.sections import ms, settings_for

REDIS = os.environ.get("REDRAFT_BENCH_REDIS", "redis://127.0.0.1:6379/0")
TARGET_S = 0.020
OWN, SHARED = "own process", "client's process"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class StampedChat(FakeChat):
    """The fake model, noting when each request reaches it (and printing it, ``loud``, for a parent process)."""

    stamps: list[float] = []
    loud: bool = False

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs):
        now = time.perf_counter()
        self.stamps.append(now)
        if self.loud:
            print(f"STAMP {now!r}", flush=True)
        return await super()._agenerate(messages, stop, run_manager, **kwargs)


class StampedProvider(FakeProvider):
    def __init__(self, settings, loud: bool = False) -> None:
        super().__init__(settings)
        self.model = StampedChat(latency=0.0, script=self.model.script, prompt_log=[], stamps=[], loud=loud)


def _redis_answers(url: str) -> bool:
    import redis

    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def _client(tasked: bool):
    import fastmcp_tasks  # noqa: F401  (registers the client half of the tasks extension)
    from fastmcp import Client

    class PlainClient(Client):
        _auto_internal_extensions = False  # does not opt in to tasks: the call runs in the foreground

    return Client if tasked else PlainClient


async def _calls(url: str, tasked: bool, n: int, first_stamp) -> list[float]:
    """n timed ``refine`` calls (after 3 warm-ups), each on a new session; ``first_stamp(t0)`` -> first request time."""
    out = []
    async with _client(tasked)(url) as client:
        for i in range(n + 3):
            sid = (await client.call_tool("create_session", {})).structured_content["session_id"]
            t0 = time.perf_counter()
            await client.call_tool("refine", {"session_id": sid, "query": "Latency.", "max_loops": 1})
            stamp = await first_stamp(t0)
            if i >= 3:
                out.append(stamp - t0)
    return out


async def _shared_process(sqlite_path: str, redis_url: str | None, tasked: bool, n: int) -> list[float]:
    from redraft.server.app import create_server
    from tests.servers import serve_in_process

    settings = settings_for(sqlite_path, redis_url=redis_url)
    provider = StampedProvider(settings)
    stamps = provider.model.stamps

    async def first_stamp(t0: float) -> float:
        return min(s for s in stamps if s >= t0)

    async with serve_in_process(create_server(settings, provider)) as url:
        return await _calls(url, tasked, n, first_stamp)


async def _own_process(sqlite_path: str, redis_url: str | None, tasked: bool, n: int) -> list[float]:
    """The server runs in a child process (``--serve``), printing its model stamps; this process is the client."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.task_latency",
        "--serve",
        sqlite_path,
        redis_url or "",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=ROOT,
    )
    stamps: list[float] = []
    ready: asyncio.Future = asyncio.get_running_loop().create_future()

    async def read() -> None:
        assert child.stdout is not None
        async for line in child.stdout:
            word, _, value = line.decode().strip().partition(" ")
            if word == "STAMP":
                stamps.append(float(value))
            elif word == "READY" and not ready.done():
                ready.set_result(value)
        if not ready.done():
            ready.set_exception(RuntimeError("the bench server exited before serving"))

    async def first_stamp(t0: float) -> float:
        for _ in range(500):  # the child's line may trail the reply by a moment
            later = [s for s in stamps if s >= t0]
            if later:
                return min(later)
            await asyncio.sleep(0.01)
        raise RuntimeError("no model request was stamped")

    reader = asyncio.create_task(read())
    try:
        url = await asyncio.wait_for(ready, timeout=180)
        return await _calls(url, tasked, n, first_stamp)
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.terminate()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(child.wait(), timeout=30)
        reader.cancel()


async def _serve(sqlite_path: str, redis_url: str) -> None:
    """``--serve``: the server of the own-process rows, until terminated."""
    from redraft.server.app import create_server
    from tests.servers import serve_in_process

    settings = settings_for(sqlite_path, redis_url=redis_url or None)
    async with serve_in_process(create_server(settings, StampedProvider(settings, loud=True))) as url:
        print(f"READY {url}", flush=True)
        await asyncio.Event().wait()


async def task_latency(sqlite_dir: str, n: int = 30) -> dict:
    rows, p50 = [], {}
    paths = [("foreground tools/call (baseline)", None, False), ("task, in-process queue (memory://)", None, True)]
    redis_ok = _redis_answers(REDIS)
    if redis_ok:
        paths.append(("task, Redis queue", REDIS, True))
    previous = os.environ.get("FASTMCP_DOCKET_NAME")
    queue = os.environ["FASTMCP_DOCKET_NAME"] = f"redraft-bench-{uuid.uuid4().hex[:8]}"  # the child inherits it
    try:
        for where, measure in ((OWN, _own_process), (SHARED, _shared_process)):
            for label, redis_url, tasked in paths:
                path = os.path.join(sqlite_dir, f"tasks-{uuid.uuid4().hex[:6]}.sqlite")
                values = await measure(path, redis_url, tasked, n)
                p50[where, label] = statistics.median(values)
                p90 = statistics.quantiles(values, n=10)[-1]
                rows.append([where, label, ms(p50[where, label]), ms(p90), ms(min(values)), ms(max(values))])
            if not redis_ok:
                rows.append([where, "task, Redis queue", "skipped", f"no Redis at {REDIS}", "", ""])
    finally:
        if previous is None:
            os.environ.pop("FASTMCP_DOCKET_NAME", None)
        else:
            os.environ["FASTMCP_DOCKET_NAME"] = previous
        if redis_ok:
            with contextlib.suppress(Exception):
                await _drop_queue_keys(queue)

    def said(where: str) -> str:
        tasked = {k[1]: v for k, v in p50.items() if k[0] == where and k[1].startswith("task")}
        base = p50[where, "foreground tools/call (baseline)"]
        return ", ".join(f"{k}: {v * 1000:.1f} ms" for k, v in tasked.items()) + f" (baseline {base * 1000:.1f} ms)"

    worst = max(v for k, v in p50.items() if k[0] == OWN and k[1].startswith("task"))
    return {
        "title": "7. Background task start: tools/call to the first model request",
        "what": f"p50 of {n} `refine` calls (fake model, SQLite, HTTP on 127.0.0.1, fastmcp.Client), each on a new "
        "session: time from sending `tools/call` to the model receiving its first request. As a task the call "
        "returns a task id once its run record and Redis keys are stored, and a Docket worker picks the run up; the "
        "baseline is the same call run in the foreground by a client that does not opt in to tasks. Rows "
        f"'{OWN}': the server runs in a process of its own, as deployed. Rows '{SHARED}': client and server share "
        "one process and event loop, so the task client's first `tasks/get` polls (sent the moment it has the task "
        "id) spend their CPU on the server's thread inside the measured window.",
        "headers": ["server", "path", "p50 ms", "p90 ms", "min ms", "max ms"],
        "rows": rows,
        "target": "<= 20 ms p50 as a task (with and without Redis), server in its own process",
        "verdict": f"{OWN}: {said(OWN)}: {'met' if worst <= TARGET_S else 'NOT met'}; {SHARED}: {said(SHARED)}",
    }


async def _drop_queue_keys(name: str) -> None:
    import redis.asyncio as redis

    client = redis.Redis.from_url(REDIS)
    try:
        async for key in client.scan_iter(match=f"*{name}*"):
            await client.delete(key)
    finally:
        await client.aclose()


async def _alone(n: int) -> None:
    import tempfile

    from rich.console import Console
    from rich.table import Table

    with tempfile.TemporaryDirectory() as tmp:
        section = await task_latency(tmp, n)
    table = Table(*section["headers"], title=section["title"])
    for row in section["rows"]:
        table.add_row(*(str(c) for c in row))
    Console(width=150).print(table)
    print(f"target: {section['target']}\nresult: {section['verdict']}")


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    parser = argparse.ArgumentParser(prog="python -m bench.task_latency", description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=30, help="timed calls per row (after 3 warm-ups)")
    parser.add_argument("--serve", nargs=2, metavar=("SQLITE", "REDIS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    asyncio.run(_serve(*args.serve) if args.serve else _alone(args.n))
