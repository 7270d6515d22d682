"""A walk of a thread's delta history reuses the snapshots its process decoded before (graph/seedcache.py) only when
the database holds the same blob, and reads what a cold reader reads."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from redraft.errors import RedraftError
from redraft.graph.checkpointer import SNAPSHOT_SUPERSTEPS, open_persistence
from redraft.graph.runner import Runner
from redraft.graph.seedcache import SeedValues
from redraft.observability import metrics
from tests.conftest import make_settings, new_thread


def test_the_cache_keeps_within_its_budget_and_forgets_threads():
    seeds = SeedValues(max_items=100)
    seeds.put(("t", "", "usage", "v1"), [{}] * 9, 321, "snapshot")
    assert seeds.get(("t", "", "usage", "v1")) == ([{}] * 9, 321, "snapshot")
    assert seeds.get(("t", "", "usage", "v2")) is None
    for i in range(20):  # 10 items each against a budget of 100: the least recently used go first
        seeds.put((f"o{i}", "", "usage", "v"), [{}] * 9, 1, "snapshot")
    assert len(seeds) == 10 and seeds.get(("t", "", "usage", "v1")) is None
    seeds.put(("big", "", "usage", "v"), [{}] * 30, 1, "snapshot")  # over a quarter of the budget: not kept
    assert seeds.get(("big", "", "usage", "v")) is None
    seeds.forget("o19")
    assert seeds.get(("o19", "", "usage", "v")) is None and len(seeds) == 9
    off = SeedValues(max_items=0)
    off.put(("t", "", "usage", "v"), [], 1, "snapshot")
    assert len(off) == 0


def _reads(source: str) -> float:
    return REGISTRY.get_sample_value("redraft_snapshot_reads_total", {"source": source}) or 0.0


@pytest.mark.postgres
async def test_a_walk_reuses_a_snapshot_only_while_the_database_holds_the_same_blob(pg_url, stub):
    metrics.enable()
    stub.configure(changes=[30])
    settings = make_settings(pg_url, stub)
    thread = new_thread()
    async with open_persistence(settings) as p, open_persistence(settings) as q:
        ours, theirs = Runner(p, settings), Runner(q, settings)
        await ours.draft(thread, "generic", "Reuse the snapshots.", max_loops=100, similarity_threshold=1.0)
        for n in range(SNAPSHOT_SUPERSTEPS + 4):  # past a snapshot of run_log, usage and scores
            await (ours.critique(thread) if n % 2 == 0 else ours.revise(thread))

        async def cold() -> dict:
            async with open_persistence(settings) as r:  # a replica that never read the thread
                return (await Runner(r, settings).snapshot(thread)).values

        fetched, reused = _reads("fetched"), _reads("reused")
        first = (await theirs.snapshot(thread)).values
        assert _reads("fetched") - fetched >= 3 and _reads("reused") == reused
        await ours.critique(thread)  # another replica's step: a new head, the same snapshots
        second = (await theirs.snapshot(thread)).values
        assert _reads("reused") - reused >= 3, "the second walk decoded the snapshots again"
        assert second == await cold() and second != first

        # the snapshot row changes under the same key (as if the thread were deleted and made again): the size
        # differs, so the database sends the new blob and the walk uses it, not the copy it holds
        serde = q.saver.serde
        async with q.saver.conn.connection() as conn:
            row = await (
                await conn.execute(
                    "SELECT version, type, blob FROM checkpoint_blobs WHERE thread_id = %s AND channel = 'run_log' "
                    "AND type LIKE 'snapshot%%' ORDER BY version DESC LIMIT 1",
                    (thread,),
                )
            ).fetchone()
            snap = serde.loads_typed((row["type"], row["blob"]))
            snap.value[0]["query"] = "A query the cache never saw."
            type_, blob = serde.dumps_typed(snap)
            assert len(blob) != len(row["blob"])
            await conn.execute(
                "UPDATE checkpoint_blobs SET type = %s, blob = %s WHERE thread_id = %s AND channel = 'run_log' "
                "AND version = %s",
                (type_, blob, thread, row["version"]),
            )
        third = (await theirs.snapshot(thread)).values
        assert third["run_log"][0]["query"] == "A query the cache never saw."
        assert third == await cold()

        # the same size under another serde type: sent again and read by that type, which fails here (zstd bytes
        # read as plain msgpack): the copy this process holds is not used
        async with q.saver.conn.connection() as conn:
            await conn.execute(
                "UPDATE checkpoint_blobs SET type = 'snapshot' WHERE thread_id = %s AND channel = 'run_log' "
                "AND version = %s",
                (thread, row["version"]),
            )
        with pytest.raises(RedraftError):
            await theirs.snapshot(thread)

        await theirs.persistence.saver.adelete_thread(thread)
        assert not any(key[0] == thread for key in q.saver.seeds._entries)
