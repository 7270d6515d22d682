"""Background runs, the core (graph/runs.py, graph/runexec.py, graph/bus.py): real SQLite and PostgreSQL, the real
HTTP model stub, real Redis for the bus."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from redraft.graph.bus import MemoryBus, RedisBus
from redraft.graph.runexec import execute_run
from redraft.graph.runs import RunStore
from redraft.graph.timetravel import history

SESSION = "s-runs"


def _thread() -> str:
    return f"{SESSION}{uuid.uuid4().hex[:8]}:generic"


async def _until_steps(store: RunStore, run_id: str, n: int) -> None:
    for _ in range(1000):
        if ((await store.get(run_id))["steps"] or 0) >= n:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} did not reach {n} steps")


async def _new_run(store: RunStore, thread: str, query: str = "Explain fencing tokens.", **options) -> dict:
    return await store.create(
        thread_id=thread,
        session_id=thread.split(":")[0],
        companion="generic",
        principal="anon",
        request={"query": query, "options": {"similarity_threshold": 1.0, "max_loops": 3, **options}},
    )


async def test_run_succeeds_and_a_redelivery_is_a_no_op(runner, stub):
    store, bus = RunStore(runner.persistence.db), MemoryBus()
    thread = _thread()
    run = await _new_run(store, thread)
    assert run["status"] == "queued"
    view = await execute_run(runner, store, bus, run["run_id"])
    assert view["status"] == "succeeded", view
    assert view["steps"] == 7 and view["loop"] == 3 and view["last_similarity"] is not None
    assert view["result"]["phase"] == "done" and view["result"]["final_text"]
    assert view["first_checkpoint"] and view["last_checkpoint"] == view["result"]["checkpoint_id"]
    calls = len(stub.requests)
    again = await execute_run(runner, store, bus, run["run_id"])  # a duplicate delivery
    assert again["status"] == "succeeded" and len(stub.requests) == calls
    assert (await bus.latest(run["run_id"]))["status"] == "succeeded"


async def test_a_retried_run_continues_from_its_last_checkpoint(runner, stub):
    """A worker died after some steps (the row still says running): the next attempt resumes, never starts over."""
    store, bus = RunStore(runner.persistence.db), MemoryBus()
    thread = _thread()
    run = await _new_run(store, thread)
    stub.configure(latency_ms=150)
    task = asyncio.create_task(execute_run(runner, store, bus, run["run_id"]))
    await _until_steps(store, run["run_id"], 3)
    task.cancel()  # no cancel requested: like a shutdown, the run stays "running"
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await store.get(run["run_id"]))["status"] == "running"
    stub.configure(latency_ms=0)
    view = await execute_run(runner, store, bus, run["run_id"])
    assert view["status"] == "succeeded" and view["attempts"] == 2
    steps = [s for s in (await history(runner, thread, limit=100))["checkpoints"]]
    assert len(stub.prompts("draft")) == 1  # the query was not opened a second time
    assert view["result"]["slots"] == 1 and len(view["result"]["slot"]["revision"]) == 3, steps


async def test_cancel_requested_ends_the_run_cancelled_and_the_thread_resumable(runner, stub):
    store, bus = RunStore(runner.persistence.db), MemoryBus()
    thread = _thread()
    run = await _new_run(store, thread)
    stub.configure(latency_ms=300)
    task = asyncio.create_task(execute_run(runner, store, bus, run["run_id"]))
    await _until_steps(store, run["run_id"], 1)
    await store.request_cancel(run["run_id"])
    started = time.monotonic()
    task.cancel()  # what docket.cancel does to the worker's task
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1.0
    final = await store.get(run["run_id"])
    assert final["status"] == "cancelled" and final["error_code"] == "cancelled"
    stub.configure(latency_ms=0)
    resumed = await runner.resume(thread)  # the lease was released; the thread continues from its checkpoint
    assert resumed["phase"] == "done"


async def test_queued_run_cancelled_before_any_worker_picks_it(runner):
    store = RunStore(runner.persistence.db)
    run = await _new_run(store, _thread())
    after = await store.request_cancel(run["run_id"])
    assert after["status"] == "cancelled" and after["finished_at"]
    view = await execute_run(runner, store, MemoryBus(), run["run_id"])
    assert view["status"] == "cancelled"


async def test_status_transitions_are_guarded(runner):
    store = RunStore(runner.persistence.db)
    run = await _new_run(store, _thread())
    results = await asyncio.gather(
        *[store.update(run["run_id"], expect=("queued",), status="running", worker=f"w{i}") for i in range(5)]
    )
    assert sum(results) == 1
    assert await store.finish(run["run_id"], "succeeded")
    assert not await store.finish(run["run_id"], "failed")
    assert (await store.get(run["run_id"]))["status"] == "succeeded"


async def test_redis_bus_carries_progress_between_processes_views(redis_url):
    a, b = RedisBus(redis_url), RedisBus(redis_url)  # two replicas' buses
    run_id = str(uuid.uuid4())
    received: list[dict] = []

    async def listen():
        async for event in b.subscribe(run_id):
            received.append(event)
            if event.get("type") == "finished":
                return

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0.2)
    await a.publish(run_id, {"type": "step", "steps": 1})
    await a.publish(run_id, {"type": "finished", "status": "succeeded"})
    await asyncio.wait_for(listener, 5)
    assert [e["type"] for e in received] == ["step", "finished"]
    assert (await b.latest(run_id))["status"] == "succeeded"
    await a.close()
    await b.close()


@pytest.mark.solo  # a 1 s lease against 0.7 s model calls: another process's load can cost it its lease
async def test_a_duplicate_delivery_while_the_first_worker_lives_advances_nothing(runner, stub):
    """Docket redelivers a run whose first worker still lives (its claim renewal was late): the fenced lease makes the
    duplicate wait, advancing nothing, and the run ends once with every step exactly once."""
    store, bus = RunStore(runner.persistence.db), MemoryBus()
    thread = _thread()
    run = await _new_run(store, thread)
    runner.persistence.db.lease_ttl = 1.0  # the duplicate's first wait (lease + 2 s) ends long before the run does
    stub.configure(latency_ms=700)
    first = asyncio.create_task(execute_run(runner, store, bus, run["run_id"], worker="first"))
    await _until_steps(store, run["run_id"], 2)
    second = asyncio.create_task(execute_run(runner, store, bus, run["run_id"], worker="second"))
    a, b = await asyncio.wait_for(asyncio.gather(first, second), 30)
    assert a["status"] == b["status"] == "succeeded", (a, b)
    assert len(stub.prompts("draft")) == 1 and len(stub.requests) == 7  # no step was run twice
    checkpoints = (await history(runner, thread, limit=100))["checkpoints"]
    nodes = [c["node"] for c in reversed(checkpoints) if c["node"] in ("draft", "critique", "revise")]
    assert nodes == ["draft"] + ["critique", "revise"] * 3
    assert all(c["on_head_branch"] for c in checkpoints)
