"""redraft's compact PostgreSQL layout (graph/pglayout.py: a task's writes in one row, slimmer checkpoint rows) reads
exactly as the stock layout.

The PostgreSQL check copies a real thread into the stock layout (tests/stock_layout.py) and compares what redraft
reads from the two at every checkpoint: state values (through the delta walk), next nodes, checkpoints, metadata
and pending writes."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, timedelta, timezone

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from redraft.errors import UnsafePayloadError
from redraft.graph import deltawalk, pglayout
from redraft.graph.checkpointer import open_persistence
from redraft.graph.pglayout import (
    COUNTERS,
    NULL_TASK_ID,
    PACK_PREFIX,
    PACK_TYPE,
    SEEN_KEY,
    expand_loaded,
    expand_stage2,
    full_checkpoint,
    full_metadata,
    pack,
    packed_rows,
    slim_checkpoint,
    slim_metadata,
    unpack,
)
from redraft.graph.runner import Runner
from tests.conftest import make_settings, new_thread
from tests.stock_layout import stock_copy


def test_a_pack_round_trips_and_refuses_what_is_not_one():
    writes = [
        (0, "run_log", "json+zstd", b"\x28\xb5"),
        (1, "usage", "json", b"[]"),
        (2, "branch:to:revise", "null", b""),
    ]
    assert list(unpack(pack(writes))) == writes
    assert list(unpack(pack([(7, "é", "json", '"ü"'.encode())]))) == [(7, "é", "json", '"ü"'.encode())]
    blob = pack(writes)
    for bad in (b"", b"\x09" + blob[1:], blob[:-3], blob[:5]):
        with pytest.raises(UnsafePayloadError):
            list(unpack(bad))


def test_a_step_s_pack_is_compressed_against_the_frozen_dictionary_and_a_plain_one_still_reads():
    usage = b'{"slot":0,"node":"critique","n":4,"model":"m","input_tokens":1456,"output_tokens":122,"estimated":false}'
    writes = [
        (0, "run_log", "json", b'{"op":"critique","slot":0,"n":4,"text":"Tighten the opening."}'),
        (1, "usage", "json", usage),
        (2, "branch:to:revise", "null", b""),
    ]
    blob = pack(writes)
    plain = b"\x01" + pglayout._body(writes)
    assert blob[0] == 2 and len(blob) < 0.6 * len(plain)
    assert list(unpack(blob)) == list(unpack(plain)) == writes  # version 1, as written before, reads the same
    tiny = [(0, "a", "json", b"1"), (1, "b", "json", b"2")]
    assert pack(tiny)[0] == 1  # compression did not pay: stored plain
    with pytest.raises(UnsafePayloadError):
        list(unpack(b"\x02" + bytes(reversed(blob[1:]))))
    # every version-2 pack ever written needs these exact bytes: a change must be a new pack version instead
    assert hashlib.sha256(pglayout._DICTIONARY).hexdigest() == (
        "c33f9579e7ded0490d80f97f189dac0406cbe06738018e198832c628091cdf37"
    )


def test_only_a_tasks_regular_writes_are_folded():
    head = ("t", "", "c1")
    rows = [
        (*head, "task-a", "p", 0, "run_log", "json", b"1"),
        (*head, "task-a", "p", -1, "__error__", "json", b"2"),  # special: stays a row (it is upserted)
        (*head, "task-a", "p", 1, "usage", "json", b"3"),
        (*head, "task-a", "p", 2, "__pregel_tasks", "json", b"4"),  # LangGraph's own channel
        (*head, "task-b", "p", 0, "run_log", "json", b"5"),  # a single write
        (*head, NULL_TASK_ID, "", 0, "run_log", "json", b"6"),  # the null task's writes are sent again as they grow
        (*head, NULL_TASK_ID, "", 1, "usage", "json", b"7"),
    ]
    out = packed_rows(rows)
    packs = [r for r in out if r[6].startswith(PACK_PREFIX)]
    assert len(packs) == 1 and packs[0][:7] == (*head, "task-a", "p", 0, PACK_PREFIX + "run_log,usage")
    assert packs[0][7] == PACK_TYPE
    assert list(unpack(packs[0][8])) == [(0, "run_log", "json", b"1"), (1, "usage", "json", b"3")]
    assert [r for r in out if not r[6].startswith(PACK_PREFIX)] == [rows[1], rows[3], rows[4], rows[5], rows[6]]
    assert packed_rows(rows[4:5]) == rows[4:5]


_CHANNELS = st.sampled_from(["run_log", "usage", "scores", "branch:to:revise", "__error__", "__pregel_tasks", "a,b"])
_TASKS = st.sampled_from(["task-a", "task-b", NULL_TASK_ID])


@st.composite
def _batches(draw):
    """A step's pending-write rows as the saver merges them: unique (task, idx) keys, any mix of channels."""
    rows, used = [], set()
    for task, channel, idx, blob in draw(
        st.lists(st.tuples(_TASKS, _CHANNELS, st.integers(-4, 6), st.binary(max_size=40)), max_size=14)
    ):
        if (task, idx) in used:
            continue
        used.add((task, idx))
        rows.append(("t", "", "c1", task, f"~path, {task}", idx, channel, "json", blob))
    return rows


@settings(max_examples=300, deadline=None)
@given(_batches(), st.lists(st.sampled_from(["run_log", "usage", "scores", "branch:to:revise", "a,b"]), unique=True))
def test_any_mix_of_writes_reads_back_as_the_rows_it_was(rows, wanted):
    """Folding a step's rows into packs loses, adds and reorders nothing, for the stock loader (every row) and for
    the delta walk (the rows of the channels it reads)."""
    stored = packed_rows(rows)
    assert len(stored) <= len(rows)
    as_loaded = [(r[3].encode(), r[6].encode(), r[7].encode(), r[8], r[4].encode(), str(r[5]).encode()) for r in stored]
    back = expand_loaded(as_loaded)
    expected = [(r[3].encode(), r[6].encode(), r[7].encode(), r[8], r[4].encode(), str(r[5]).encode()) for r in rows]
    assert sorted(back) == sorted(expected)
    stage2 = [
        {"_kind": "w", "checkpoint_id": r[2], "channel": r[6], "type": r[7], "blob": r[8], "task_id": r[3],
         "task_path": r[4], "idx": r[5], "version": None}
        for r in stored
        if r[6] in wanted or (r[6].startswith(PACK_PREFIX) and set(r[6][len(PACK_PREFIX):].split(",")) & set(wanted))
    ]  # fmt: skip
    got = sorted((w["task_id"], w["idx"], w["channel"], w["blob"]) for w in expand_stage2(stage2, wanted))
    assert got == sorted((r[3], r[5], r[6], r[8]) for r in rows if r[6] in wanted)


@given(
    st.dictionaries(
        st.text(st.characters(codec="utf-8"), min_size=1, max_size=12),
        st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)),
    )
)
def test_metadata_counters_read_back_as_written(counters):
    metadata = {"step": 3, "source": "loop", COUNTERS: {k: list(v) for k, v in counters.items()}}
    assert full_metadata(slim_metadata(metadata)) == metadata


_names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
_versions = st.one_of(
    st.builds(lambda n, h: f"{n:010d}.{h:08x}", st.integers(0, 10**10 - 1), st.integers(0, 2**32 - 1)),  # redraft's
    st.builds(lambda n: f"{n:032}.{0.5:016}", st.integers(0, 10**6)),  # LangGraph's stock format
    _names,  # anything else: must come back unchanged, or the row keeps its JSONB
)
_times = st.one_of(
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
    st.datetimes(timezones=st.just(timezone(timedelta(hours=2)))).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat()),
    _names,
)


@given(
    _times,
    st.dictionaries(_names, st.dictionaries(_names, _versions, max_size=4), max_size=5),
    st.one_of(st.none(), st.lists(_names, max_size=4)),
)
def test_a_checkpoint_reads_back_as_written(ts, versions_seen, updated):
    checkpoint = {
        "v": 4,
        "id": "1f0c5d2e-0000-6000-8000-000000000000",
        "ts": ts,
        "channel_values": {"branch:to:revise": None},
        "channel_versions": {"run_log": "0000000003.0badcafe"},
        "versions_seen": versions_seen,
        "updated_channels": updated,
    }
    stored = slim_checkpoint(checkpoint)
    assert "id" not in stored
    assert full_checkpoint(json.loads(json.dumps(stored)), checkpoint["id"]) == checkpoint


def test_a_step_s_checkpoint_folds_its_time_and_channel_lists_into_one_string():
    checkpoint = {
        "v": 4,
        "id": "x",
        "ts": "2026-11-26T12:21:39.793576+00:00",
        "channel_values": {},
        "channel_versions": {"run_log": "0000000098.c823a4f1"},
        "versions_seen": {"critique": {"branch:to:critique": "0000000097.c44afb26"}, "__input__": {}},
        "updated_channels": ["branch:to:revise", "run_log"],
    }
    stored = slim_checkpoint(checkpoint)
    assert set(stored) == {"v", "channel_values", "channel_versions", SEEN_KEY}
    assert "97.c44afb26" in stored[SEEN_KEY] and "0097" not in stored[SEEN_KEY]
    assert full_checkpoint(stored, "x") == checkpoint
    with pytest.raises(UnsafePayloadError):
        full_checkpoint({**stored, SEEN_KEY: "17x" + stored[SEEN_KEY][3:]}, "x")
    # names holding the string's separators, or values that are not strings: kept as LangGraph wrote them
    for odd in (
        {"versions_seen": {"a\x1fb": {}}},
        {"versions_seen": {"a": {"b\x1dc": "0000000001.00000000"}}},
        {"updated_channels": ["\x1c"]},
        {"versions_seen": {"a": {"b": 1}}},
        {"versions_seen": {"a": ["b"]}},
        {"ts": "yesterday"},
    ):
        stored = slim_checkpoint({**checkpoint, **odd})
        assert full_checkpoint(stored, "x") == {**checkpoint, **odd}
        assert (SEEN_KEY in stored) is ("ts" in odd) and "ts" in stored  # an odd time alone keeps just itself


def _parent(snapshot) -> str | None:
    return snapshot.parent_config and snapshot.parent_config["configurable"]["checkpoint_id"]


async def _assert_reads_as(runner: Runner, thread: str, plain: str, reader=None) -> None:
    """Every checkpoint of ``thread`` reads as the same checkpoint of ``plain``, its copy in the stock layout, and
    (given ``reader``, another saver) as ``reader`` reads it."""
    saver = runner.persistence.saver
    ours = [s async for s in runner.graph.aget_state_history(runner.config(thread))]
    stock = [s async for s in runner.graph.aget_state_history(runner.config(plain))]
    assert len(ours) == len(stock) > 10
    for a, b in zip(ours, stock, strict=True):
        assert a.config["configurable"]["checkpoint_id"] == b.config["configurable"]["checkpoint_id"]
        assert a.values == b.values and a.next == b.next
        ta, tb = await saver.aget_tuple(a.config), await saver.aget_tuple(b.config)
        assert ta.pending_writes == tb.pending_writes
        assert ta.checkpoint == tb.checkpoint, (ta.checkpoint, tb.checkpoint)
        assert ta.metadata == tb.metadata, (ta.metadata, tb.metadata)
        assert _parent(ta) == _parent(tb) == _parent(a)
        if reader is not None:
            tr = await reader.aget_tuple(a.config)
            assert (tr.checkpoint, tr.metadata, tr.pending_writes) == (ta.checkpoint, ta.metadata, ta.pending_writes)


@pytest.mark.postgres
async def test_packed_threads_read_as_the_stock_layout(pg_url, stub):
    stub.configure(changes=[30])
    settings = make_settings(pg_url, stub)
    thread, plain = new_thread(), new_thread()
    async with open_persistence(settings) as p:
        runner = Runner(p, settings)
        await runner.refine(thread, "generic", "Packed writes.", max_loops=20, similarity_threshold=1.0)
        await runner.draft(thread, "generic", "A second query, by steps.")  # steps stop at gates (interrupts)
        await runner.critique(thread)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            per_task = conn.execute(
                "SELECT count(*) FILTER (WHERE idx >= 0), bool_or(starts_with(channel, %s)) FROM checkpoint_writes "
                "WHERE thread_id = %s GROUP BY checkpoint_id, task_id",
                (PACK_PREFIX, thread),
            ).fetchall()
            expanded = stock_copy(conn, thread, plain)
            stored = conn.execute("SELECT count(*) FROM checkpoint_writes WHERE thread_id = %s", (thread,)).fetchone()
            metadata = conn.execute("SELECT metadata FROM checkpoints WHERE thread_id = %s", (thread,)).fetchall()
        # each task's run_log, usage, scores and routing writes are one row: ~4 stock rows per durable step
        assert any(packed for _, packed in per_task) and all(regular <= 1 for regular, _ in per_task)
        assert expanded >= 3 * stored[0] > 0
        assert any(isinstance(m.get(COUNTERS), str) for (m,) in metadata)  # the slim form is what is stored

        await _assert_reads_as(runner, thread, plain)
        pending = [
            (await p.saver.aget_tuple(s.config)).pending_writes
            async for s in runner.graph.aget_state_history(runner.config(thread))
        ]
        assert sum(map(bool, pending)) > 20  # checkpoints with pending writes (the packs) were compared


@pytest.mark.postgres
async def test_the_stock_layout_setting_writes_rows_the_stock_saver_reads_and_a_thread_may_mix_both(pg_url, stub):
    """``REDRAFT_DB_COMPACT_LAYOUT=false`` (a rolling upgrade: older replicas still read the database) writes the
    stock layout; turned on later, the same thread goes on in the compact one and reads whole."""
    stub.configure(changes=[30])
    thread, plain = new_thread(), new_thread()
    stock_settings = make_settings(pg_url, stub, db_compact_layout=False)
    async with open_persistence(stock_settings) as p:
        runner = Runner(p, stock_settings)
        await runner.refine(thread, "generic", "Stock rows first.", max_loops=4, similarity_threshold=1.0)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            packs = conn.execute(
                "SELECT count(*) FROM checkpoint_writes WHERE thread_id = %s AND starts_with(channel, %s)",
                (thread, PACK_PREFIX),
            ).fetchone()
            rows = conn.execute(
                "SELECT checkpoint_id, checkpoint, metadata FROM checkpoints WHERE thread_id = %s", (thread,)
            ).fetchall()
            stock_copy(conn, thread, plain)
        assert packs == (0,) and len(rows) > 5
        assert all(cp["id"] == cid and not isinstance(md.get(COUNTERS), str) for cid, cp, md in rows)
        # the stock saver (what a release from before the compact layout runs) reads what redraft reads
        await _assert_reads_as(runner, thread, plain, reader=AsyncPostgresSaver(p.saver.conn, serde=p.saver.serde))

    settings = make_settings(pg_url, stub)
    async with open_persistence(settings) as p:
        runner = Runner(p, settings)
        result = await runner.refine(thread, "generic", "Then compact rows.", max_loops=4, similarity_threshold=1.0)
        assert len(result["slot"]["revision"]) == 4 and (result["slot_index"], result["slots"]) == (1, 2)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            for table in ("checkpoint_writes", "checkpoint_blobs", "checkpoints"):
                conn.execute(f"DELETE FROM {table} WHERE thread_id = %s", (plain,))
            stock_copy(conn, thread, plain)
            packs = conn.execute(
                "SELECT count(*) FROM checkpoint_writes WHERE thread_id = %s AND starts_with(channel, %s)",
                (thread, PACK_PREFIX),
            ).fetchone()
        assert packs[0] > 0
        await _assert_reads_as(runner, thread, plain)


@pytest.mark.postgres
async def test_the_delta_walk_fetches_only_the_packs_that_hold_a_channel_it_reads(pg_url, stub, monkeypatch):
    """A channel's walk can span the whole thread where it was never written (here ``outcomes``, first written at the
    end of the query): every checkpoint on the way holds a pack of the other channels, and none is fetched."""
    stub.configure(changes=[30])
    settings = make_settings(pg_url, stub)
    thread = new_thread()
    fetched: list[dict] = []
    expand = deltawalk.expand_stage2
    monkeypatch.setattr(
        deltawalk, "expand_stage2", lambda rows, channels: expand(fetched.extend(rows) or rows, channels)
    )
    async with open_persistence(settings) as p:
        runner = Runner(p, settings)
        await runner.refine(thread, "generic", "A long query.", max_loops=30, similarity_threshold=1.0)
        ids = [
            s.config["configurable"]["checkpoint_id"]
            async for s in runner.graph.aget_state_history(runner.config(thread))
        ]
        late = {"configurable": {"thread_id": thread, "checkpoint_ns": "", "checkpoint_id": ids[2]}}
        fetched.clear()
        history = await p.saver.aget_delta_channel_history(config=late, channels=["outcomes", "run_log"])
        assert history["outcomes"]["writes"] == [] and "seed" not in history["outcomes"]
        assert fetched and all(not r["channel"].startswith(PACK_PREFIX) or "run_log" in r["channel"] for r in fetched)
        packs = [r for r in fetched if r["channel"].startswith(PACK_PREFIX)]
        # run_log's own chain (a snapshot every 32 updates), not outcomes' (back to the thread's start)
        assert 0 < len(packs) <= 33 and len(ids) > 60, (len(packs), len(ids))
