"""Graceful drain (server/drain.py) with real `redraft serve` processes sharing PostgreSQL and Redis, and a slow stub
model: SIGTERM the replica running a background run in the middle of a step. While it drains, /readyz answers 503
and a new call gets the retryable `draining` error; a foreground refine in progress answers `draining` after its
step. The step in flight is committed, the replica exits 0, and the other replica resumes the run within 1 s of the
exit (not after the 10 s lease or Docket's redelivery timeout), a start_refine run and an MCP task alike: no step
lost, none run twice."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from asyncio.subprocess import PIPE

import httpx
import mcp
from fastmcp_tasks.client_models import ClientCreateTaskResult

from tests.servers import REDRAFT, HttpServer, server_env
from tests.task_client import TasksOptIn, poll
from tests.test_runs_replicas import _linear_once, call, wait_for

LOOPS = 8
SLOW_MS = 4000  # per model reply while the second replica starts: the runs cannot finish before it is up
LATENCY_MS = 600  # per model reply around the signal


async def _exit_code(server: HttpServer, within: float) -> int:
    deadline = time.monotonic() + within
    while server.proc.poll() is None:
        assert time.monotonic() < deadline, "the draining server did not exit"
        await asyncio.sleep(0.02)
    return server.proc.returncode


async def _moved(client: mcp.Client, run_id: str, to: HttpServer, when: list[float]) -> None:
    """Note when replica ``to`` claims the run (its second attempt), as seen through that replica."""
    while True:
        seen = await call(client, "run_status", run_id=run_id)
        if seen["attempts"] >= 2 and seen["worker"].endswith(f":{to.proc.pid}"):
            when.append(time.monotonic())
            return
        await asyncio.sleep(0.02)


async def test_sigterm_drains_the_steps_in_flight_and_the_other_replica_resumes_within_1s(
    pg_url, redis_url, stub, tmp_path
):
    stub.configure(latency_ms=SLOW_MS, changes=[12])
    env = server_env(
        pg_url, stub.base_url, REDRAFT_REDIS_URL=redis_url, REDRAFT_LEASE_TTL_SECONDS="10", REDRAFT_DRAIN_SECONDS="60"
    )
    # the replica to drain starts alone, so its worker takes both background runs
    t0 = time.monotonic()
    draining = HttpServer(env, log=tmp_path / "draining.log").start()
    up = [time.monotonic() - t0]
    other = HttpServer(env, log=tmp_path / "other.log")
    args = {"query": "Drain me.", "max_loops": LOOPS, "similarity_threshold": 1.0}
    try:
        async with mcp.Client(draining.url, read_timeout_seconds=10, extensions=[TasksOptIn()]) as on_d:
            sid = (await call(on_d, "create_session"))["session_id"]
            run = await call(on_d, "start_refine", session_id=sid, **args)
            task_sid = (await call(on_d, "create_session"))["session_id"]
            task = await on_d.session.call_tool("refine", {"session_id": task_sid, **args}, allow_claimed=True)
            assert isinstance(task, ClientCreateTaskResult)
        t0 = time.monotonic()
        await asyncio.to_thread(other.start)
        up.append(time.monotonic() - t0)
        base = f"http://127.0.0.1:{draining.port}"
        moved: dict[str, list[float]] = {run["run_id"]: [], task.task_id: []}
        async with (
            httpx.AsyncClient(timeout=5) as http,
            mcp.Client(draining.url, read_timeout_seconds=10) as on_d,
            mcp.Client(other.url, read_timeout_seconds=10, extensions=[TasksOptIn()]) as on_o,
        ):
            stub.configure(latency_ms=LATENCY_MS)
            before = {}
            for run_id in moved:
                view = await call(on_o, "run_status", run_id=run_id)
                assert view["status"] == "running" and view["worker"].endswith(f":{draining.proc.pid}"), view
                before[run_id] = view["steps"]
            for run_id in moved:  # the slow replies in flight are over: each run is on a short one now
                for _ in range(400):
                    if (await call(on_o, "run_status", run_id=run_id))["steps"] > before[run_id]:
                        break
                    await asyncio.sleep(0.05)
            readyz = (await http.get(f"{base}/readyz")).status_code
            # a foreground refine on the same replica, mid step when the signal comes
            fg_sid = (await call(on_d, "create_session"))["session_id"]
            foreground = asyncio.ensure_future(
                on_d.call_tool("refine", {"session_id": fg_sid, "query": "Foreground.", "max_loops": 5})
            )
            await asyncio.sleep(LATENCY_MS / 2000)  # every run is in the middle of a model call
            draining.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            watchers = [asyncio.ensure_future(_moved(on_o, run_id, other, when)) for run_id, when in moved.items()]
            await asyncio.sleep(0.1)
            refused = await on_d.call_tool("create_session", {})
            ready_while_draining = (await http.get(f"{base}/readyz")).status_code if readyz != 404 else None
            answered = await asyncio.wait_for(foreground, 15)
            code = await _exit_code(draining, within=20)
            exited = time.monotonic()
            await asyncio.wait_for(asyncio.gather(*watchers), 15)
            stub.configure(latency_ms=0)  # the rest of both runs, quickly
            final = await wait_for(on_o, run["run_id"], within=60)
            finished_task, _ = await poll(on_o, task.task_id, within=60)
            task_run = await call(on_o, "run_status", run_id=task.task_id)
            history = await call(on_o, "history", session_id=sid, limit=100)
            task_history = await call(on_o, "history", session_id=task_sid, limit=100)
            fg_status = await call(on_o, "status", session_id=fg_sid)
    finally:
        draining.stop()
        other.stop()
    resumed = {run_id: when[0] for run_id, when in moved.items()}
    print(
        f"drain: replicas up in {up[0]:.1f} s and {up[1]:.1f} s; the runs finished {time.monotonic() - exited:.1f} s "
        f"after the exit; exited {exited - signalled:.2f} s after SIGTERM (code {code}); the other replica resumed the "
        f"start_refine run {resumed[run['run_id']] - signalled:.2f} s and the MCP task "
        f"{resumed[task.task_id] - signalled:.2f} s after SIGTERM"
    )
    assert code == 0
    assert exited - signalled < 30  # the steps in flight finished: no wait for the 60 s drain deadline
    assert refused.is_error and "draining" in refused.content[0].text and "retryable" in refused.content[0].text
    if readyz != 404:  # /readyz (server/ops.py): ready before, 503 while draining
        assert readyz == 200 and ready_while_draining == 503
    assert answered.is_error and answered.content[0].text.startswith("draining:"), answered.content
    assert "retryable" in answered.content[0].text
    assert fg_status["slot"]["draft"]  # the foreground refine's step in flight was kept
    for when in resumed.values():
        assert when - exited < 1.0, (resumed, exited)
    assert final["status"] == "succeeded" and final["attempts"] == 2, final
    assert finished_task.status == "completed" and task_run["status"] == "succeeded" and task_run["attempts"] == 2
    for steps in (final["steps"], task_run["steps"]):
        assert steps == 1 + 2 * LOOPS
    # every step once, one branch: the steps in flight at SIGTERM were committed, none was run again
    _linear_once(history, LOOPS)
    _linear_once(task_history, LOOPS)
    assert len(stub.requests) == 2 * (1 + 2 * LOOPS) + 1  # the two runs' steps and the foreground draft, once each


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


async def test_stdio_server_drains_on_sigterm_answers_the_refine_in_flight_and_exits_0(tmp_path, stub):
    """Over stdio too: SIGTERM while a foreground refine is in its draft's model call. The draft is committed, the
    refine answers the retryable `draining` error (on stdout, as MCP), and the process exits 0."""
    stub.configure(latency_ms=1500)
    env = server_env(str(tmp_path / "stdio.sqlite"), stub.base_url, REDRAFT_LOG_LEVEL="INFO")
    proc = await asyncio.create_subprocess_exec(REDRAFT, "serve", env=env, stdin=PIPE, stdout=PIPE, stderr=PIPE)

    async def send(message: dict) -> None:
        proc.stdin.write((json.dumps({"jsonrpc": "2.0", **message}) + "\n").encode())
        await proc.stdin.drain()

    async def answer(request_id: int) -> dict:
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line, "the server closed stdout before answering"
            message = json.loads(line)
            if message.get("id") == request_id:
                return message

    try:
        info = {"name": "drain-test", "version": "1"}
        await send(
            {
                "id": 1,
                "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": info},
            }
        )
        await answer(1)
        await send({"method": "notifications/initialized"})
        await send({"id": 2, "method": "tools/call", "params": {"name": "create_session", "arguments": {}}})
        sid = (await answer(2))["result"]["structuredContent"]["session_id"]
        args = {"session_id": sid, "query": "Over stdio.", "max_loops": 3, "similarity_threshold": 1.0}
        await send({"id": 3, "method": "tools/call", "params": {"name": "refine", "arguments": args}})
        for _ in range(1000):  # until the draft's model call is in flight
            if stub.requests:
                break
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        refine = await answer(3)
        code = await asyncio.wait_for(proc.wait(), 30)
        stderr = (await proc.stderr.read()).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    result = refine["result"]
    assert result["isError"] and result["content"][0]["text"].startswith("draining:"), result
    assert "(retryable)" in result["content"][0]["text"]
    assert code == 0, stderr[-2000:]
    assert "SIGTERM: draining" in stderr and "Traceback" not in stderr
    assert [r["node"] for r in stub.requests] == ["draft"]  # the draft finished; no further step started
