"""redraft's PostgreSQL saver (graph/pgsaver.py): one commit per durable step, and nothing held back past a run.

Checked through PostgreSQL itself: a row's ``xmin`` names the transaction that wrote it, so a step whose pending
writes and checkpoint went out in one statement shows one transaction id on both.
"""

from __future__ import annotations

import pytest
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from redraft.graph.checkpointer import open_persistence
from redraft.graph.runner import Runner
from tests.conftest import make_settings, new_thread

pytestmark = pytest.mark.postgres


async def test_a_step_commits_its_writes_with_its_checkpoint(pg_url, stub):
    stub.configure(changes=[30])
    settings = make_settings(pg_url, stub)
    thread = new_thread()
    async with open_persistence(settings) as p:
        runner = Runner(p, settings)
        await runner.refine(thread, "generic", "One commit per step.", max_loops=3, similarity_threshold=1.0)
        steps = await p.db.fetchall(
            "SELECT c.xmin::text AS checkpoint_tx, "
            "(SELECT array_agg(DISTINCT w.xmin::text) FROM checkpoint_writes w "
            " WHERE w.thread_id = c.thread_id AND w.checkpoint_id = c.parent_checkpoint_id) AS writes_tx "
            "FROM checkpoints c WHERE c.thread_id = ? AND c.parent_checkpoint_id IS NOT NULL",
            (thread,),
        )
    assert len(steps) >= 7  # draft + 3 x (critique, revise)
    for step in steps:
        assert step["writes_tx"] == [step["checkpoint_tx"]], steps


async def test_writes_of_a_run_stopped_at_a_gate_are_durable_when_it_returns(pg_url, stub, monkeypatch):
    """A step-mode draft stops at the critique gate: the gate (an interrupt write, with no checkpoint after it) is
    committed before the call returns, so another process sees it at once, and the statement that sent it also gave
    up the step's lease (no separate release)."""
    settings = make_settings(pg_url, stub)
    thread = f"{new_thread()}:generic"
    async with open_persistence(settings) as p:
        releases = []
        release = type(p.db).release

        async def counted(self, lease):
            releases.append(lease)
            return await release(self, lease)

        monkeypatch.setattr(type(p.db), "release", counted)
        result = await Runner(p, settings).draft(thread, "generic", "Stop at the gate.")
        assert result["pending_gate"]["gate"] == "critique"
        assert (
            releases == []
            and await p.db.fetchone("SELECT 1 FROM redraft_leases WHERE thread_id = ?", (thread,)) is None
        )
        async with open_persistence(settings) as other:  # its own pool: sees only what was committed
            seen = await Runner(other, settings).status(thread)
        assert seen["pending_gate"] is not None and seen["pending_gate"]["gate"] == "critique"
        assert seen["next"] == ["critique"]
        result = await Runner(p, settings).critique(thread)  # the next step takes the thread at once
        assert result["pending_gate"]["gate"] == "revise" and releases == []


async def test_reads_under_a_lease_are_served_once_and_never_stale(pg_url, stub, monkeypatch):
    """Under a lease a second read of a checkpoint comes from the first (graph/fencing.py ``DeferredWrites``): the
    head and an older checkpoint are told apart, a reader that changes its copy changes no one else's, and a write
    under the lease is seen by the next read."""
    settings = make_settings(pg_url, stub)
    thread = new_thread()
    async with open_persistence(settings) as p:
        await Runner(p, settings).refine(thread, "generic", "Cache.", max_loops=2, similarity_threshold=1.0)
        saver, head_config = p.saver, {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
        oldest = [t async for t in saver.alist(head_config)][-1].config
        reads = []
        stock = AsyncPostgresSaver.aget_tuple

        async def counted(self, config):
            reads.append(config["configurable"].get("checkpoint_id"))
            return await stock(self, config)

        monkeypatch.setattr(AsyncPostgresSaver, "aget_tuple", counted)
        async with p.db.thread_lock(thread):
            head = await saver.aget_tuple(head_config)
            head.checkpoint["channel_versions"].clear()  # this reader's own copy
            again = await saver.aget_tuple(head_config)
            old = await saver.aget_tuple(oldest)
            old_again = await saver.aget_tuple(oldest)
            assert len(reads) == 2, reads
            assert again.checkpoint["channel_versions"] and again.config == head.config
            assert old.config == old_again.config == oldest and old.config != head.config
            await saver.aput_writes(head.config, [("scores", [{"slot": 0, "note": "cache"}])], "task-x")
            after = await saver.aget_tuple(head_config)
            assert len(after.pending_writes) == len(head.pending_writes) + 1 and len(reads) == 3, reads
        assert await saver.aget_tuple(head_config) is not None and len(reads) == 4  # no lease: no cache


def test_large_json_values_are_stored_compressed_and_round_trip():
    from redraft.errors import UnsafePayloadError
    from redraft.graph.serde import ZSTD_MIN_BYTES, SafeSerializer

    serde = SafeSerializer()
    prose = " ".join(f"Revision {i} keeps the argument tight and the examples concrete." for i in range(60))
    kind, raw = serde.dumps_typed({"op": "revision", "text": prose})
    assert kind == "json+zstd" and len(raw) < len(prose) / 3
    assert serde.loads_typed((kind, raw)) == {"op": "revision", "text": prose}
    kind, raw = serde.dumps_typed({"text": "x" * (ZSTD_MIN_BYTES // 2)})  # short: plain JSON, readable with psql
    assert kind == "json"
    with pytest.raises(UnsafePayloadError):
        serde.loads_typed(("json+zstd", b"not a zstd frame"))
