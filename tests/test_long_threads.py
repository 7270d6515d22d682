"""Long threads (issue 19): a read replays a bounded number of delta writes, whatever the thread's length.

* every delta channel snapshots at least every ``SNAPSHOT_SUPERSTEPS`` supersteps (graph/checkpointer.py), so the
  walk from the head back to each channel's seed stays short even for logs written once per query;
* redraft's walk (graph/pgsaver.py ``aget_delta_channel_history``) returns exactly what LangGraph's stock walk
  returns on a copy of the thread in the stock layout (tests/stock_layout.py), at the head, at old checkpoints and
  on a fork;
* snapshots are stored as plain msgpack + zstd (graph/serde.py), and rows in the previous format (LangGraph's
  msgpack extension, uncompressed) stay readable.
"""

from __future__ import annotations

import psycopg
import pytest
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.postgres.base import SELECT_SQL
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.serde.types import _DeltaSnapshot

from redraft.errors import UnsafePayloadError
from redraft.graph import timetravel as tt
from redraft.graph.checkpointer import SNAPSHOT_SUPERSTEPS, open_persistence
from redraft.graph.runner import Runner
from redraft.graph.serde import SafeSerializer
from tests.conftest import make_settings, new_thread
from tests.stock_layout import stock_copy

DELTA_CHANNELS = ["run_log", "scores", "outcomes", "history", "truncations", "usage"]


def test_snapshots_round_trip_compressed_and_old_snapshots_stay_readable():
    serde = SafeSerializer()
    value = [{"query": "q", "draft": "word " * 400, "critique": ["c"] * 3, "revision": ["r " * 300] * 3}]
    kind, raw = serde.dumps_typed(_DeltaSnapshot(value))
    assert kind == "snapshot+zstd" and len(raw) < 1000
    loaded = serde.loads_typed((kind, raw))
    assert isinstance(loaded, _DeltaSnapshot) and loaded.value == value
    kind, raw = serde.dumps_typed(_DeltaSnapshot([{"slot": 0}]))
    assert kind == "snapshot" and serde.loads_typed((kind, raw)).value == [{"slot": 0}]
    # the previous format: LangGraph's own msgpack extension, as written before this change
    old = JsonPlusSerializer().dumps_typed(_DeltaSnapshot(value))
    assert old[0] == "msgpack"
    assert serde.loads_typed(old).value == value
    with pytest.raises(UnsafePayloadError):
        serde.loads_typed(("snapshot+zstd", b"not a zstd frame"))
    with pytest.raises(UnsafePayloadError):
        serde.loads_typed(("snapshot", b"\xc1"))


async def _histories(saver, config, channels, stock_thread: str | None = None) -> tuple[dict, dict]:
    """redraft's walk of ``config``, and the stock walk of the same checkpoint of ``stock_thread``, the thread's
    copy in the stock layout (tests/stock_layout.py): the stock walk cannot read redraft's packed writes."""
    ours = await saver.aget_delta_channel_history(config=config, channels=channels)
    stock = None
    if stock_thread is not None:
        other = {"configurable": {**config["configurable"], "thread_id": stock_thread}}
        stock = await AsyncPostgresSaver.aget_delta_channel_history(saver, config=other, channels=channels)
    return ours, stock


def _comparable(histories: dict) -> dict:
    out = {}
    for channel, entry in histories.items():
        seed = entry.get("seed")
        out[channel] = (
            [(w[0], w[1], repr(w[2])) for w in entry["writes"]],
            repr(seed.value if isinstance(seed, _DeltaSnapshot) else seed),
        )
    return out


@pytest.mark.postgres
async def test_walk_matches_the_stock_walk_and_replays_a_bounded_number_of_writes(pg_url, stub):
    stub.configure(changes=[8])
    settings = make_settings(pg_url, stub)
    thread = new_thread()
    async with open_persistence(settings) as p:
        runner = Runner(p, settings)
        await runner.refine(thread, "generic", "A long thread.", max_loops=40, similarity_threshold=1.0)
        await runner.refine(thread, "generic", "A second query.", max_loops=3, similarity_threshold=1.0)
        ids = [
            r["checkpoint_id"]
            for r in await p.db.fetchall(
                "SELECT checkpoint_id FROM checkpoints WHERE thread_id = ? ORDER BY checkpoint_id", (thread,)
            )
        ]
        assert len(ids) > 2 * SNAPSHOT_SUPERSTEPS
        # a fork from an early checkpoint: its branch shares the ancestors before it, not the rows after
        phases = {c: (await runner.status(thread, c))["phase"] for c in ids[2:12]}
        early = min(c for c, phase in phases.items() if phase == "needs_revision")
        fork_head = (await tt.fork(runner, thread, early, critique="A human critique on a branch."))["checkpoint_id"]
        assert fork_head not in ids
        copy = new_thread()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            stock_copy(conn, thread, copy)
        targets = [ids[-1], ids[len(ids) // 2], ids[3], fork_head]
        for checkpoint_id in targets:
            config = {"configurable": {"thread_id": thread, "checkpoint_ns": "", "checkpoint_id": checkpoint_id}}
            ours, stock = await _histories(p.saver, config, DELTA_CHANNELS, copy)
            assert _comparable(ours) == _comparable(stock), checkpoint_id
        head = {"configurable": {"thread_id": thread, "checkpoint_ns": "", "checkpoint_id": ids[-1]}}
        ours, _ = await _histories(p.saver, head, DELTA_CHANNELS)
        for channel, entry in ours.items():
            assert len(entry["writes"]) <= SNAPSHOT_SUPERSTEPS + 1, (channel, len(entry["writes"]))


@pytest.mark.postgres
async def test_a_thread_written_in_the_previous_snapshot_format_reads_the_same(pg_url, stub):
    """Rewrite every snapshot row of a thread as the previous code stored it (LangGraph's msgpack extension,
    uncompressed): its state and history read exactly as before."""
    stub.configure(changes=[8])
    settings = make_settings(pg_url, stub)
    thread = new_thread()
    async with open_persistence(settings) as p:
        runner = Runner(p, settings)
        await runner.refine(thread, "generic", "Old rows.", max_loops=20, similarity_threshold=1.0)
        before = await runner.status(thread)
        page_before = await tt.history(runner, thread)
    serde, stock = SafeSerializer(), JsonPlusSerializer()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT channel, version, type, blob FROM checkpoint_blobs WHERE thread_id = %s AND type LIKE 'snapshot%%'",
            (thread,),
        ).fetchall()
        assert rows, "the thread wrote no snapshot"
        for channel, version, type_, blob in rows:
            old_type, old_blob = stock.dumps_typed(serde.loads_typed((type_, blob)))
            conn.execute(
                "UPDATE checkpoint_blobs SET type = %s, blob = %s WHERE thread_id = %s AND channel = %s "
                "AND version = %s",
                (old_type, old_blob, thread, channel, version),
            )
    async with open_persistence(settings) as p:
        runner = Runner(p, settings)
        assert await runner.status(thread) == before
        assert await tt.history(runner, thread) == page_before
        await runner.refine(thread, "generic", "And it carries on.", max_loops=2, similarity_threshold=1.0)
        assert (await runner.status(thread))["slots"] == 2


@pytest.mark.postgres
async def test_a_step_walks_the_thread_once(pg_url, stub, monkeypatch):
    """The runner's phase check and the graph's own load read the same head under one lease: the second read of the
    checkpoint and of the delta history come from the first (graph/fencing.py ``DeferredWrites``), and still see the
    step's own writes afterwards (any write clears them)."""
    settings = make_settings(pg_url, stub)
    thread = new_thread()
    walks: list[str] = []
    heads: list[str] = []
    execute = psycopg.AsyncCursor.execute

    async def counting(self, query, params=None, **kwargs):
        if str(query).startswith("SELECT checkpoint_id, parent_checkpoint_id"):
            walks.append(str(query))
        if str(query).startswith(SELECT_SQL):
            heads.append(str(query))
        return await execute(self, query, params, **kwargs)

    async with open_persistence(settings) as p:
        runner = Runner(p, settings)
        await runner.draft(thread, "generic", "Walk once.", max_loops=3, similarity_threshold=1.0)
        monkeypatch.setattr(psycopg.AsyncCursor, "execute", counting)
        p.saver.heads.forget(thread)  # as if another replica ran the draft (tests/test_headcache.py: no walk at all)
        result = await runner.critique(thread)
        assert len(walks) == 1 and len(heads) == 1, (walks, heads)
        assert result["phase"] == "needs_revision" and len(result["slot"]["critique"]) == 1
        walks.clear()
        heads.clear()
        p.saver.heads.forget(thread)
        result = await runner.revise(thread)
        assert len(walks) == 1 and len(heads) == 1 and len(result["slot"]["revision"]) == 1
        monkeypatch.undo()
        assert (await runner.status(thread))["slot"] == result["slot"]
