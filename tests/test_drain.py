"""Graceful drain (server/drain.py) with real `redraft serve` processes sharing PostgreSQL and Redis, and a slow stub
model: SIGTERM the replica running a background run in the middle of a step. While it drains, /readyz answers 503
and a new call gets the retryable `draining` error; a foreground refine in progress answers `draining` after its
step. The step in flight is committed, the replica exits 0, and the other replica resumes the run within 1 s of the
exit (not after the 10 s lease or Docket's redelivery timeout): no step lost, none run twice."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import mcp

from tests.servers import HttpServer, server_env
from tests.test_runs_replicas import _linear_once, call, wait_for

LOOPS = 3
LATENCY_MS = 700


async def _exit_code(server: HttpServer, within: float) -> int:
    deadline = time.monotonic() + within
    while server.proc.poll() is None:
        assert time.monotonic() < deadline, "the draining server did not exit"
        await asyncio.sleep(0.02)
    return server.proc.returncode


async def test_sigterm_drains_the_step_in_flight_and_the_other_replica_resumes_within_1s(
    pg_url, redis_url, stub, tmp_path
):
    stub.configure(latency_ms=LATENCY_MS, changes=[12])
    env = server_env(pg_url, stub.base_url, REDRAFT_REDIS_URL=redis_url, REDRAFT_LEASE_TTL_SECONDS="10")
    servers = [HttpServer(env, log=tmp_path / f"{n}.log") for n in "ab"]
    t0 = time.monotonic()
    await asyncio.gather(*(asyncio.to_thread(server.start) for server in servers))
    started = time.monotonic() - t0
    try:
        async with mcp.Client(servers[0].url, read_timeout_seconds=10) as client:
            sid = (await call(client, "create_session"))["session_id"]
            run = await call(
                client, "start_refine", session_id=sid, query="Drain me.", max_loops=LOOPS, similarity_threshold=1.0
            )
            for _ in range(400):
                view = await call(client, "run_status", run_id=run["run_id"])
                if view["steps"] >= 2:
                    break
                await asyncio.sleep(0.02)
        running = next(s for s in servers if view["worker"].endswith(f":{s.proc.pid}"))
        other = next(s for s in servers if s is not running)
        base = f"http://127.0.0.1:{running.port}"
        resumed: list[float] = []

        async def watch(on_o: mcp.Client) -> None:
            """When the other replica claims the run (its second attempt), as seen through that replica."""
            while True:
                seen = await call(on_o, "run_status", run_id=run["run_id"])
                if seen["attempts"] >= 2 and seen["worker"].endswith(f":{other.proc.pid}"):
                    resumed.append(time.monotonic())
                    return
                await asyncio.sleep(0.02)

        async with (
            httpx.AsyncClient(timeout=5) as http,
            mcp.Client(running.url, read_timeout_seconds=10) as on_r,
            mcp.Client(other.url, read_timeout_seconds=10) as on_o,
        ):
            readyz = (await http.get(f"{base}/readyz")).status_code
            # a foreground refine on the same replica, mid step when the signal comes
            fg_sid = (await call(on_r, "create_session"))["session_id"]
            foreground = asyncio.ensure_future(
                on_r.call_tool(
                    "refine",
                    {"session_id": fg_sid, "query": "Foreground.", "max_loops": 5, "similarity_threshold": 1.0},
                )
            )
            await asyncio.sleep(LATENCY_MS / 2000)  # the run and the refine are both mid model call
            steps_at_signal = (await call(on_r, "run_status", run_id=run["run_id"]))["steps"]
            running.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            watcher = asyncio.ensure_future(watch(on_o))
            await asyncio.sleep(0.1)
            refused = await on_r.call_tool("create_session", {})
            ready_while_draining = (await http.get(f"{base}/readyz")).status_code if readyz != 404 else None
            answered = await asyncio.wait_for(foreground, 15)
            code = await _exit_code(running, within=20)
            exited = time.monotonic()
            await asyncio.wait_for(watcher, 15)
            final = await wait_for(on_o, run["run_id"], within=60)
            history = await call(on_o, "history", session_id=sid, limit=100)
            fg_status = await call(on_o, "status", session_id=fg_sid)
    finally:
        for server in servers:
            server.stop()
    print(
        f"drain: replicas up in {started:.1f} s; exited {exited - signalled:.2f} s after SIGTERM (code {code}); the "
        f"other replica resumed the run {resumed[0] - signalled:.2f} s after SIGTERM ({resumed[0] - exited:+.2f} s "
        "from the exit)"
    )
    assert code == 0
    assert exited - signalled < 10  # the step in flight finished: no wait for the 30 s drain deadline
    assert refused.is_error and "draining" in refused.content[0].text and "retryable" in refused.content[0].text
    if readyz != 404:  # /readyz (server/ops.py): ready before, 503 while draining
        assert readyz == 200 and ready_while_draining == 503
    assert answered.is_error and answered.content[0].text.startswith("draining:"), answered.content
    assert "retryable" in answered.content[0].text
    assert fg_status["phase"] != "empty" and fg_status["slot"]["draft"]  # its step in flight was kept
    assert resumed[0] - exited < 1.0, (resumed, exited)
    assert final["status"] == "succeeded" and final["attempts"] == 2, final
    assert final["steps"] == 1 + 2 * LOOPS and final["steps"] > steps_at_signal
    _linear_once(history, LOOPS)  # every step once, one branch: the step in flight at SIGTERM was not lost
    assert len(stub.prompts("draft")) == 2  # the run's and the foreground refine's: neither opened again


async def test_a_step_still_running_at_the_deadline_is_cut_its_lease_released_and_the_call_answers_draining(
    tmp_path, stub
):
    """REDRAFT_DRAIN_SECONDS bounds the wait: a step still in its model call then is cancelled, its lease released,
    and its caller answered with the retryable `draining` error. Nothing of the cut step was kept, and a retry (here:
    another server on the same database) continues the thread from its last checkpoint."""
    from redraft.graph.leases import HELD
    from redraft.server.app import create_server
    from redraft.server.drain import Drain
    from tests.clients import PlainClient as Client  # a foreground call (no MCP task)
    from tests.conftest import make_settings

    db = str(tmp_path / "cut.sqlite")
    stub.configure(latency_ms=20_000)
    settings = make_settings(db, stub, drain_seconds=0.3)
    mcp = create_server(settings)
    async with Client(mcp) as client:
        sid = (await client.call_tool("create_session", {})).structured_content["session_id"]
        refine = asyncio.ensure_future(
            client.call_tool("refine", {"session_id": sid, "query": "Cut me."}, raise_on_error=False)
        )
        for _ in range(1000):  # until the draft step is in its model call
            if HELD and stub.requests:
                break
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await Drain(mcp, settings).run()
        drained = time.monotonic() - started
        answered = await asyncio.wait_for(refine, 5)
        leases = await mcp._lifespan_result["redraft"].runner.persistence.db.fetchall("SELECT * FROM redraft_leases")
    assert answered.is_error and answered.content[0].text.startswith("draining:"), answered.content
    assert "(retryable)" in answered.content[0].text
    assert not HELD and leases == []
    assert drained < 0.3 + 3.0, drained
    stub.configure(latency_ms=0)
    async with Client(create_server(make_settings(db, stub))) as retry:
        done = (await retry.call_tool("refine", {"session_id": sid})).structured_content
    assert done["phase"] == "done" and done["slot"]["query"] == "Cut me."
    assert len(stub.prompts("draft")) == 2  # the cut draft call, then the retry's: the cut step left nothing behind
