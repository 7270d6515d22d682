"""Background runs across real `redraft serve` processes sharing PostgreSQL and Redis: the official `mcp` SDK client
with a 5 s read timeout, kill -9 mid-run and restart, two replicas (start on A, poll and cancel on B), and load."""

from __future__ import annotations

import asyncio
import time

import mcp
import pytest

from tests.servers import HttpServer, server_env

LEASE = "2"  # seconds: a killed replica's step lease lapses quickly


async def call(client: mcp.Client, tool: str, **args) -> dict:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content
    return result.structured_content


async def wait_for(client: mcp.Client, run_id: str, within: float = 60.0) -> dict:
    """Follow a run with wait_run long polls of 4 s (under the client's 5 s read timeout) until it stops."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        view = await call(client, "wait_run", run_id=run_id, timeout_s=4)
        if not view["timed_out"]:
            return view
    raise AssertionError(f"run {run_id} still {view['status']} after {within}s")


async def continued(client: mcp.Client, run_id: str, steps_before: int, within: float = 60.0) -> float:
    """When (monotonic) a new attempt at the run committed its first step after ``steps_before``."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        view = await call(client, "run_status", run_id=run_id)
        if view["attempts"] >= 2 and view["steps"] > steps_before:
            return time.monotonic()
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} did not continue: {view}")


def env(pg_url: str, stub, redis_url: str | None, lease: str = LEASE, **extra: str) -> dict[str, str]:
    more = {"REDRAFT_LEASE_TTL_SECONDS": lease, **extra}
    if redis_url:
        more["REDRAFT_REDIS_URL"] = redis_url
    return server_env(pg_url, stub.base_url, **more)


async def test_official_sdk_client_with_5s_read_timeout_completes_a_20_step_refine_by_start_refine_and_wait_run(
    pg_url, redis_url, stub
):
    # one reply per second, never converging: 1 draft + 2 x 10 loops = 21 model replies (~21 s)
    stub.configure(latency_ms=1000, changes=[12])
    server = HttpServer(env(pg_url, stub, redis_url)).start()
    try:
        async with mcp.Client(server.url, read_timeout_seconds=5) as client:
            sid = (await call(client, "create_session"))["session_id"]
            started = time.monotonic()
            run = await call(
                client,
                "start_refine",
                session_id=sid,
                query="Explain durable runs.",
                max_loops=10,
                similarity_threshold=1.0,
            )
            assert time.monotonic() - started < 1.0 and run["status"] == "queued"
            view = await wait_for(client, run["run_id"], within=90)
            elapsed = time.monotonic() - started
    finally:
        server.stop()
    assert view["status"] == "succeeded", view
    assert view["steps"] == 21 and view["loop"] == 10 and view["result"]["phase"] == "done"
    assert len(view["result"]["slot"]["revision"]) == 10
    assert len(stub.requests) == 21
    assert elapsed > 20  # far past the client's read timeout, which no single request came near
    # it outlived Docket's redelivery timeout (= the 2 s lease) ten times over, yet no second worker was handed it
    assert view["attempts"] == 1


def _linear_once(history: dict, loops: int) -> None:
    """One linear branch, and every step of the query exactly once: draft, then critique/revise per loop."""
    checkpoints = list(reversed(history["checkpoints"]))  # oldest first
    assert all(c["on_head_branch"] for c in checkpoints), [c["branch"] for c in checkpoints]
    ids = {c["checkpoint_id"] for c in checkpoints}
    assert all(c["parent_id"] in ids or c["parent_id"] is None for c in checkpoints)
    assert len({c["parent_id"] for c in checkpoints}) == len(checkpoints)  # no checkpoint has two children
    nodes = [c["node"] for c in checkpoints if c["node"] in ("draft", "critique", "revise")]
    assert nodes == ["draft"] + ["critique", "revise"] * loops, nodes


@pytest.mark.parametrize("queue", ["redis", "memory"])
async def test_kill_9_mid_run_and_restart_the_same_run_succeeds_with_every_step_once(
    pg_url, redis_url, stub, tmp_path, queue
):
    """Redis: the killed worker's Docket task is redelivered to the restarted replica. memory://: the restart finds
    the run "running" in its table and queues it again. Either way it continues from its last checkpoint."""
    stub.configure(latency_ms=250, changes=[12])
    loops = 6
    server = HttpServer(env(pg_url, stub, redis_url if queue == "redis" else None), log=tmp_path / "a.log").start()
    try:
        async with mcp.Client(server.url, read_timeout_seconds=5) as client:
            sid = (await call(client, "create_session"))["session_id"]
            run = await call(
                client, "start_refine", session_id=sid, query="Crash me.", max_loops=loops, similarity_threshold=1.0
            )
            for _ in range(200):
                before = await call(client, "run_status", run_id=run["run_id"])
                if before["steps"] >= 4:
                    break
                await asyncio.sleep(0.05)
        server.kill()
        killed = time.monotonic()
        server.start()
        restarted = time.monotonic()
        async with mcp.Client(server.url, read_timeout_seconds=5) as client:
            # the lease lapses LEASE s after the kill; the run may continue once that has passed and the replica is up
            recovered = await continued(client, run["run_id"], before["steps"]) - max(killed + float(LEASE), restarted)
            view = await wait_for(client, run["run_id"], within=60)
            history = await call(client, "history", session_id=sid, limit=100)
    finally:
        server.stop()
    print(f"{queue}: killed mid-run (restart took {restarted - killed:.1f} s); continued {recovered:.1f} s later")
    assert view["status"] == "succeeded", view
    assert view["attempts"] >= 2 and view["steps"] >= 2 * loops + 1
    assert len(view["result"]["slot"]["revision"]) == loops
    assert len(stub.prompts("draft")) == 1  # the query was never opened again
    _linear_once(history, loops)
    assert recovered < 10, recovered  # within 10 s of the lease lapsing (and the replica being back)


async def test_kill_9_the_replica_running_a_run_and_the_other_replica_finishes_it(pg_url, redis_url, stub, tmp_path):
    stub.configure(latency_ms=250, changes=[12])
    loops = 6
    servers = [HttpServer(env(pg_url, stub, redis_url), log=tmp_path / f"{n}.log").start() for n in "ab"]
    try:
        async with mcp.Client(servers[0].url, read_timeout_seconds=5) as client:
            sid = (await call(client, "create_session"))["session_id"]
            run = await call(
                client, "start_refine", session_id=sid, query="Fail over.", max_loops=loops, similarity_threshold=1.0
            )
            for _ in range(200):
                view = await call(client, "run_status", run_id=run["run_id"])
                if view["steps"] >= 4:
                    break
                await asyncio.sleep(0.05)
        # whichever replica's worker took the run: kill that one, follow the run through the other
        running = next(s for s in servers if view["worker"].endswith(f":{s.proc.pid}"))
        survivor = next(s for s in servers if s is not running)
        running.kill()
        killed = time.monotonic()
        async with mcp.Client(survivor.url, read_timeout_seconds=5) as client:
            recovered = await continued(client, run["run_id"], view["steps"]) - (killed + float(LEASE))
            final = await wait_for(client, run["run_id"], within=60)
            history = await call(client, "history", session_id=sid, limit=100)
    finally:
        for server in servers:
            server.stop()
    print(f"failover: the other replica continued the run {recovered:.1f} s after its {LEASE} s lease lapsed")
    assert final["status"] == "succeeded" and final["attempts"] == 2, final
    assert final["worker"].endswith(f":{survivor.proc.pid}")
    assert len(stub.prompts("draft")) == 1
    _linear_once(history, loops)
    assert recovered < 10, recovered


async def test_two_replicas_start_on_a_poll_and_cancel_on_b(pg_url, redis_url, stub, tmp_path):
    stub.configure(latency_ms=1000, changes=[12])
    a = HttpServer(env(pg_url, stub, redis_url), log=tmp_path / "a.log").start()
    b = HttpServer(env(pg_url, stub, redis_url), log=tmp_path / "b.log").start()
    try:
        async with (
            mcp.Client(a.url, read_timeout_seconds=5) as on_a,
            mcp.Client(b.url, read_timeout_seconds=5) as on_b,
        ):
            sid = (await call(on_a, "create_session"))["session_id"]
            run = await call(
                on_a, "start_refine", session_id=sid, query="Across replicas.", max_loops=10, similarity_threshold=1.0
            )
            seen = []
            for _ in range(100):  # progress of the run, whichever replica runs it, seen through B
                view = await call(on_b, "run_status", run_id=run["run_id"])
                seen.append((view["status"], view["steps"], view["progress"]))
                if view["steps"] >= 2:
                    break
                await asyncio.sleep(0.1)
            assert view["status"] == "running" and view["phase"] and view["progress"], seen
            assert len({s[1] for s in seen}) >= 2, seen  # B saw it move
            await asyncio.sleep(0.3)  # now in the middle of a 1 s model call
            started = time.monotonic()
            cancelled = await call(on_b, "cancel_run", run_id=run["run_id"])
            while cancelled["status"] != "cancelled" and time.monotonic() - started < 5:
                cancelled = await call(on_b, "run_status", run_id=run["run_id"])
            latency = time.monotonic() - started
            requests_at_cancel = len(stub.requests)
            await asyncio.sleep(1.5)
            on_a_view = await call(on_a, "run_status", run_id=run["run_id"])
            requests_later = len(stub.requests)
            # the thread stays at its last checkpoint and can be resumed
            stub.configure(latency_ms=0)
            resumed = await call(on_a, "resume", session_id=sid)
    finally:
        a.stop()
        b.stop()
    print(f"cancel latency through replica B: {latency * 1000:.0f} ms")
    assert cancelled["status"] == "cancelled" and on_a_view["status"] == "cancelled", cancelled
    assert latency < 1.0, latency
    assert requests_later <= requests_at_cancel + 1  # nothing ran on after the cancel (one in flight at most)
    assert resumed["phase"] == "done"


async def test_load_50_background_runs_on_two_replicas_none_lost_none_twice(pg_url, redis_url, stub, tmp_path):
    stub.configure(latency_ms=30, changes=[12])
    loops = 1
    # the default 10 s step lease: two busy replicas on two shared cores
    a = HttpServer(env(pg_url, stub, redis_url, lease="10"), log=tmp_path / "a.log").start()
    b = HttpServer(env(pg_url, stub, redis_url, lease="10"), log=tmp_path / "b.log").start()
    try:
        async with (
            mcp.Client(a.url, read_timeout_seconds=15) as on_a,
            mcp.Client(b.url, read_timeout_seconds=15) as on_b,
        ):
            clients = [on_a, on_b]

            async def one(i: int) -> tuple[str, dict]:
                client = clients[i % 2]
                sid = (await call(client, "create_session"))["session_id"]
                run = await call(
                    client,
                    "start_refine",
                    session_id=sid,
                    query=f"Load query number {i}.",
                    max_loops=loops,
                    similarity_threshold=1.0,
                )
                return f"Load query number {i}.", run

            started = await asyncio.gather(*[one(i) for i in range(50)])
            views = await asyncio.gather(
                *[wait_for(clients[i % 2], r["run_id"], 120) for i, (_, r) in enumerate(started)]
            )
    finally:
        a.stop()
        b.stop()
    assert [v["status"] for v in views] == ["succeeded"] * 50, [v for v in views if v["status"] != "succeeded"][:2]
    assert all(v["attempts"] == 1 for v in views)  # none picked up twice
    assert {v["worker"] for v in views}.__len__() == 2  # both replicas' workers ran some
    drafts = [p[-1]["content"] for p in stub.prompts("draft")]
    for query, _ in started:
        assert sum(query in d for d in drafts) == 1, query  # every run's draft requested exactly once
    assert len(stub.requests) == 50 * (1 + 2 * loops)
    assert all(len(v["result"]["slot"]["revision"]) == loops for v in views)
