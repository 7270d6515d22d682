"""A step starts from the values its process's last run on the thread committed (graph/headcache.py), instead of
walking the thread's delta history in the database, and reads exactly what a cold reader reads.

Checked against a second persistence (its own pool and saver, as another replica has), which always walks: after
every step of a thread that crosses its delta snapshots, is advanced by the other replica, and is forked."""

from __future__ import annotations

import random

import psycopg
import pytest
from prometheus_client import REGISTRY

from redraft.errors import RedraftError
from redraft.graph import timetravel as tt
from redraft.graph.checkpointer import SNAPSHOT_SUPERSTEPS, open_persistence
from redraft.graph.headcache import HeadValues, weight
from redraft.graph.runner import Runner
from redraft.observability import metrics
from tests.conftest import make_settings, new_thread

WALK = "SELECT checkpoint_id, parent_checkpoint_id"  # the first stage of the delta walk (graph/deltawalk.py)


def test_the_cache_answers_only_for_its_checkpoint_and_stays_within_its_budget():
    heads = HeadValues(max_items=400)
    values = {"run_log": [{"query": "q", "draft": "d", "critique": ["c"], "revision": ["r"]}], "usage": [{}] * 9}
    assert weight(values) == 1 + 2 + 9
    heads.remember("t1", "", "c1", values)
    assert heads.histories("t1", "", "c1", ["run_log", "usage"]) == {
        "run_log": {"writes": [], "seed": values["run_log"]},
        "usage": {"writes": [], "seed": values["usage"]},
    }
    assert heads.histories("t1", "", "c0", ["run_log"]) is None  # another checkpoint of the thread
    assert heads.histories("t1", "", "c1", ["run_log", "scores"]) is None  # a channel it does not have
    assert heads.histories("t2", "", "c1", ["run_log"]) is None
    heads.remember("t1", "", "c2", values)  # the thread moved on: only its new head answers
    assert heads.histories("t1", "", "c1", ["run_log"]) is None and len(heads) == 1
    for i in range(40):  # 12 items each against a budget of 400: the least recently used threads go
        heads.remember(f"other-{i}", "", "c", values)
    assert len(heads) == 400 // 12 and heads.histories("t1", "", "c2", ["run_log"]) is None
    heads.remember("huge", "", "c", {"usage": [{}] * 101})  # over a quarter of the budget: not kept
    assert heads.histories("huge", "", "c", ["usage"]) is None
    heads.forget("other-39")
    assert heads.histories("other-39", "", "c", ["usage"]) is None and len(heads) == 400 // 12 - 1
    off = HeadValues(max_items=0)  # REDRAFT_HEAD_CACHE_ITEMS=0: nothing kept, not even a thread with empty logs
    off.remember("t", "", "c", {"usage": []})
    assert len(off) == 0 and off.histories("t", "", "c", ["usage"]) is None


@pytest.mark.postgres
async def test_steps_skip_the_walk_and_read_what_another_replica_reads(pg_url, stub, monkeypatch):
    stub.configure(changes=[30])
    settings = make_settings(pg_url, stub)
    thread = new_thread()
    walks: list[str] = []
    execute = psycopg.AsyncCursor.execute

    async def counting(self, query, params=None, **kwargs):
        if str(query).startswith(WALK):
            walks.append(str(query))
        return await execute(self, query, params, **kwargs)

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", counting)
    async with open_persistence(settings) as p, open_persistence(settings) as q:
        ours, theirs = Runner(p, settings), Runner(q, settings)

        async def same_as_a_cold_read() -> None:
            async with p.db.thread_lock(thread):  # under a lease: what the next step starts from
                warm = await ours.snapshot(thread)
            theirs.persistence.saver.seeds.forget(thread)  # no decoded snapshot kept either (graph/seedcache.py)
            cold = await theirs.snapshot(thread)  # the other replica's saver has never seen this thread
            assert warm.config == cold.config and warm.values == cold.values and warm.next == cold.next

        async def step(runner: Runner, n: int) -> dict:
            return await (runner.critique(thread) if n % 2 == 0 else runner.revise(thread))

        await ours.draft(thread, "generic", "Start from the last run.", max_loops=100, similarity_threshold=1.0)
        n = 0
        for n in range(SNAPSHOT_SUPERSTEPS + 6):  # crosses a snapshot of every delta channel
            walks.clear()
            result = await step(ours, n)
            assert walks == [], (n, walks)  # neither the phase check nor the graph's load walked
            await same_as_a_cold_read()
        assert len(result["slot"]["revision"]) == (SNAPSHOT_SUPERSTEPS + 6) // 2

        await step(theirs, n + 1)  # another replica moves the thread on (a critique): what this process kept is stale
        walks.clear()
        result = await step(ours, n + 2)
        assert len(walks) == 1 and result["phase"] == "ready_to_critique", (walks, result["phase"])
        await same_as_a_cold_read()

        # a fork makes a new head from an old checkpoint, which no run of this process ended at
        history = await tt.history(ours, thread, limit=12)
        early = next(c["checkpoint_id"] for c in history["checkpoints"] if c["phase"] == "needs_revision")
        fork_head = (await tt.fork(ours, thread, early, critique="A human critique on a branch."))["checkpoint_id"]
        assert ours.persistence.saver.heads.histories(thread, "", fork_head, ["run_log"]) is None
        for k in range(3):
            walks.clear()
            result = await step(ours, 1 + k)  # the fork's checkpoint stores its logs whole: no walk from it either
            assert walks == [], (k, walks)
            await same_as_a_cold_read()
        assert result["slot"]["critique"][-2] == "A human critique on a branch."


@pytest.mark.postgres
async def test_history_reads_are_counted_by_source(pg_url, stub):
    """``redraft_history_reads_total``: a step after this process's own counts as last_run, one after another
    replica's as walk (an operator behind a load balancer without session affinity sees mostly walks)."""
    metrics.enable()  # as a server does

    def reads(source: str) -> float:
        return REGISTRY.get_sample_value("redraft_history_reads_total", {"source": source}) or 0.0

    settings = make_settings(pg_url, stub)
    thread = new_thread()
    async with open_persistence(settings) as p, open_persistence(settings) as q:
        ours, theirs = Runner(p, settings), Runner(q, settings)
        await ours.draft(thread, "generic", "Count the reads.", max_loops=5, similarity_threshold=1.0)
        before = reads("walk"), reads("last_run")
        await ours.critique(thread)  # after its own draft
        await theirs.revise(thread)  # the other replica has never seen the thread
        await ours.critique(thread)  # after the other replica's step
        assert (reads("walk") - before[0], reads("last_run") - before[1]) == (2, 1)
    off = make_settings(pg_url, stub, head_cache_items=0)
    async with open_persistence(off) as p:  # turned off: every step walks
        runner = Runner(p, off)
        await runner.revise(thread)
        await runner.critique(thread)
        assert (reads("walk") - before[0], reads("last_run") - before[1]) == (4, 1)


@pytest.mark.postgres
@pytest.mark.parametrize("seed", [19, 20])
async def test_random_steps_forks_replays_and_failures_on_two_replicas_read_what_a_cold_reader_reads(
    pg_url, stub, seed
):
    """Steps on either replica, failed model calls, forks and replays in a seeded random order: after each, what a
    step on either replica would start from (under its lease) is what a cold read of the database gives."""
    stub.configure(changes=[30])
    settings = make_settings(pg_url, stub)
    thread = new_thread()
    rng = random.Random(seed)
    async with open_persistence(settings) as p, open_persistence(settings) as q:
        replicas = [Runner(p, settings), Runner(q, settings)]

        async def agree() -> None:
            for runner, other in (replicas, replicas[::-1]):
                async with runner.persistence.db.thread_lock(thread):
                    warm = await runner.snapshot(thread)
                other.persistence.saver.seeds.forget(thread)  # a cold read: the database only
                cold = await other.snapshot(thread)
                assert (warm.config, warm.values, warm.next) == (cold.config, cold.values, cold.next)

        async def step(runner: Runner) -> str:
            phase = (await runner.status(thread))["phase"]
            query = f"Query {rng.random():.3f}."
            if phase in ("empty", "done") and rng.random() < 0.5:  # a whole query in one run: its last values kept
                await runner.refine(thread, "generic", query, max_loops=3, similarity_threshold=1.0)
                return "refine"
            if phase in ("empty", "done"):
                await runner.draft(thread, "generic", query, max_loops=3, similarity_threshold=1.0)
            elif phase == "ready_to_critique":
                await runner.critique(thread)
            elif phase == "needs_revision":
                await runner.revise(thread)
            else:
                await runner.resume(thread)
            return "step"

        await step(replicas[0])
        done = {"step": 0, "failed": 0, "fork": 0, "replay": 0, "refine": 0}
        for _ in range(40):
            runner = rng.choice(replicas)
            op = rng.choices(["step", "failed", "fork", "replay"], weights=[6, 1, 1, 1])[0]
            checkpoints = (await tt.history(runner, thread, limit=30))["checkpoints"]
            if op == "failed":
                stub.fail({"status": 500})
                with pytest.raises(RedraftError):
                    await step(runner)
            elif op == "fork" and (edits := [c for c in checkpoints[1:] if c["phase"] == "needs_revision"]):
                await tt.fork(runner, thread, rng.choice(edits)["checkpoint_id"], critique=f"Edit {rng.random():.3f}.")
            elif op == "replay" and (starts := [c for c in checkpoints[1:] if c["phase"] == "ready_to_critique"]):
                await tt.replay(runner, thread, rng.choice(starts)["checkpoint_id"])
            else:
                op = await step(runner)
            done[op] += 1
            await agree()
        assert all(done.values()), done
