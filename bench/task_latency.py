"""Benchmark section: time from ``tools/call`` to the first model request, for ``refine`` as an MCP background task
(queue in process, and on Redis) beside the same call answered in the foreground (the baseline)."""

from __future__ import annotations

import contextlib
import os
import statistics
import time
import uuid

from bench.fake import FakeChat, FakeProvider
from bench.sections import ms, settings_for

REDIS = os.environ.get("REDRAFT_BENCH_REDIS", "redis://127.0.0.1:6379/0")
TARGET_S = 0.020


class StampedChat(FakeChat):
    """The fake model, noting when each request reaches it."""

    stamps: list[float] = []

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs):
        self.stamps.append(time.perf_counter())
        return await super()._agenerate(messages, stop, run_manager, **kwargs)


class StampedProvider(FakeProvider):
    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.model = StampedChat(latency=0.0, script=self.model.script, prompt_log=[], stamps=[])


def _redis_answers(url: str) -> bool:
    import redis

    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


async def _first_request_latencies(sqlite_path: str, redis_url: str | None, tasked: bool, n: int) -> list[float]:
    import fastmcp_tasks  # noqa: F401  (registers the client half of the tasks extension)
    from fastmcp import Client

    from redraft.server.app import create_server
    from tests.servers import serve_in_process

    class PlainClient(Client):
        _auto_internal_extensions = False  # does not opt in to tasks: the call runs in the foreground

    settings = settings_for(sqlite_path, redis_url=redis_url)
    provider = StampedProvider(settings)
    stamps = provider.model.stamps
    out = []
    async with serve_in_process(create_server(settings, provider)) as url:
        async with (Client if tasked else PlainClient)(url) as client:
            for i in range(n + 3):  # the first 3 warm up
                sid = (await client.call_tool("create_session", {})).structured_content["session_id"]
                before = len(stamps)
                t0 = time.perf_counter()
                await client.call_tool("refine", {"session_id": sid, "query": "Latency.", "max_loops": 1})
                if i >= 3:
                    out.append(stamps[before] - t0)
    return out


async def task_latency(sqlite_dir: str, n: int = 30) -> dict:
    rows, p50 = [], {}
    cases = [("foreground tools/call (baseline)", None, False), ("task, in-process queue (memory://)", None, True)]
    redis_ok = _redis_answers(REDIS)
    if redis_ok:
        cases.append(("task, Redis queue", REDIS, True))
    previous = os.environ.get("FASTMCP_DOCKET_NAME")
    queue = os.environ["FASTMCP_DOCKET_NAME"] = f"redraft-bench-{uuid.uuid4().hex[:8]}"
    try:
        for label, redis_url, tasked in cases:
            path = os.path.join(sqlite_dir, f"tasks-{uuid.uuid4().hex[:6]}.sqlite")
            values = await _first_request_latencies(path, redis_url, tasked, n)
            p50[label] = statistics.median(values)
            p90 = statistics.quantiles(values, n=10)[-1]
            rows.append([label, ms(p50[label]), ms(p90), ms(max(values))])
    finally:
        if previous is None:
            os.environ.pop("FASTMCP_DOCKET_NAME", None)
        else:
            os.environ["FASTMCP_DOCKET_NAME"] = previous
        if redis_ok:
            with contextlib.suppress(Exception):
                await _drop_queue_keys(queue)
    if not redis_ok:
        rows.append(["task, Redis queue", "skipped", f"no Redis at {REDIS}", ""])
    tasked = {k: v for k, v in p50.items() if k.startswith("task")}
    worst = max(tasked.values())
    verdict = ", ".join(f"{k}: {v * 1000:.1f} ms" for k, v in tasked.items())
    baseline = p50["foreground tools/call (baseline)"]
    return {
        "title": "7. Background task start: tools/call to the first model request",
        "what": f"p50 of {n} `refine` calls (fake model, SQLite, in-process HTTP server, fastmcp.Client): time from "
        "sending `tools/call` to the model receiving its first request. As a task the call returns a task id at once "
        "and a Docket worker picks the run up (its run record is written first); the baseline is the same call run "
        "in the foreground by a client that does not opt in to tasks.",
        "headers": ["path", "p50 ms", "p90 ms", "max ms"],
        "rows": rows,
        "target": "<= 20 ms p50 as a task (with and without Redis)",
        "verdict": f"{verdict} (baseline {baseline * 1000:.1f} ms): " + ("met" if worst <= TARGET_S else "NOT met"),
    }


async def _drop_queue_keys(name: str) -> None:
    import redis.asyncio as redis

    client = redis.Redis.from_url(REDIS)
    try:
        async for key in client.scan_iter(match=f"*{name}*"):
            await client.delete(key)
    finally:
        await client.aclose()
