"""Durability, safety and storage growth of the checkpoints."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import sys
import textwrap

import ormsgpack
import psycopg
import pytest
import zstandard
from hypothesis import example, given, settings
from hypothesis import strategies as st
from langgraph.checkpoint.serde.types import _DeltaSnapshot

from redraft.errors import ConfigError, StorageError, UnsafePayloadError
from redraft.graph import serde as serde_module
from redraft.graph.checkpointer import backend_of, open_persistence
from redraft.graph.companions import get_companion
from redraft.graph.pglayout import PACK_PREFIX, pack, unpack
from redraft.graph.runner import Runner
from redraft.graph.serde import SafeSerializer
from redraft.settings import load_settings
from tests.conftest import make_settings, new_thread

READ_BACK = textwrap.dedent(
    """
    import asyncio, json, sys
    from redraft.graph.checkpointer import open_persistence
    from redraft.graph.runner import Runner
    from redraft.settings import load_settings

    async def main():
        settings = load_settings(database_url=sys.argv[1], base_url="http://127.0.0.1:9/v1")
        async with open_persistence(settings) as p:
            print(json.dumps(await Runner(p, settings).status(sys.argv[2])))

    asyncio.run(main())
    """
)


@pytest.mark.postgres
async def test_thread_survives_process_restart(pg_url, stub):
    settings = make_settings(pg_url, stub)
    thread = new_thread()
    async with open_persistence(settings) as p:
        result = await Runner(p, settings).refine(thread, "code", "Write a retry decorator.")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", READ_BACK, pg_url, thread, stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    again = json.loads(stdout)
    assert again["slot"] == result["slot"]
    assert again["stop_reason"] == result["stop_reason"] == "converged"
    assert again["similarities"] == result["similarities"]
    assert again["final_text"] == result["final_text"]


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


async def _tamper(db_url: str, thread: str, type_: str, blob: bytes) -> None:
    if db_url.startswith("postgresql"):  # a step's run_log write is in its task's pack (graph/pglayout.py)
        with psycopg.connect(db_url, autocommit=True) as conn:
            n = conn.execute(
                "UPDATE checkpoint_writes SET type = %s, blob = %s WHERE thread_id = %s AND channel = 'run_log'",
                (type_, blob, thread),
            ).rowcount
            packs = conn.execute(
                "SELECT checkpoint_id, task_id, idx, blob FROM checkpoint_writes "
                "WHERE thread_id = %s AND starts_with(channel, %s)",
                (thread, PACK_PREFIX),
            ).fetchall()
            for checkpoint_id, task_id, idx, packed in packs:
                writes = [(i, ch, *((type_, blob) if ch == "run_log" else (t, b))) for i, ch, t, b in unpack(packed)]
                n += conn.execute(
                    "UPDATE checkpoint_writes SET blob = %s WHERE thread_id = %s AND checkpoint_id = %s "
                    "AND task_id = %s AND idx = %s",
                    (pack(writes), thread, checkpoint_id, task_id, idx),
                ).rowcount
    else:
        import sqlite3

        with sqlite3.connect(db_url) as conn:
            n = conn.execute(
                "UPDATE writes SET type = ?, value = ? WHERE thread_id = ? AND channel = 'run_log'",
                (type_, blob, thread),
            ).rowcount
    assert n > 0


async def test_pickled_checkpoint_rows_are_refused(runner, db_url, tmp_path):
    thread = new_thread()
    await runner.draft(thread, "generic", "Harmless question.")
    marker = tmp_path / "pwned"
    Evil.marker = marker
    await _tamper(db_url, thread, "pickle", pickle.dumps(Evil()))
    with pytest.raises(UnsafePayloadError, match="never unpickles"):
        await runner.status(thread)
    assert not marker.exists()


async def test_msgpack_constructor_outside_allowlist_is_not_called(runner, db_url, tmp_path):
    thread = new_thread()
    await runner.draft(thread, "generic", "Harmless question.")
    marker = tmp_path / "pwned2"
    # ext type 1 = constructor with positional args: os.system("touch marker")
    payload = ormsgpack.packb(ormsgpack.Ext(1, ormsgpack.packb(("os", "system", [f"touch {marker}"]))))
    await _tamper(db_url, thread, "msgpack", payload)
    with pytest.raises(Exception):  # noqa: B017 - the reducer rejects the non-event; what matters is below
        await runner.status(thread)
    assert not marker.exists()


def test_serializer_round_trips_json_and_refuses_pickle():
    serde = SafeSerializer()
    value = {"a": [1, 2.5, "x", None, True], "b": {"c": "ü"}}
    kind, raw = serde.dumps_typed(value)
    assert kind == "json" and json.loads(raw) == value
    assert serde.loads_typed((kind, raw)) == value
    with pytest.raises(UnsafePayloadError):
        serde.loads_typed(("pickle", pickle.dumps(value)))
    with pytest.raises(UnsafePayloadError):
        serde.loads_typed(("marshal", b""))


def _flips(blob: bytes):
    """``blob`` with one byte changed, for each of its bytes."""
    for i in range(len(blob)):
        damaged = bytearray(blob)
        damaged[i] ^= 0x5A
        yield bytes(damaged)


def test_a_damaged_compressed_row_is_refused_wherever_the_damage_is():
    # a 60-entry usage log (a delta snapshot, msgpack + zstd), a revision (JSON + zstd) and a step's pack: zstd's
    # content checksum refuses each one-byte change; without it a flipped byte in a usage snapshot read back as
    # other entries, silently
    serde = SafeSerializer()
    usage = [
        {"slot": 0, "node": "critique", "n": i, "model": "gpt-4o-mini", "input_tokens": 400 + i, "output_tokens": 22,
         "estimated": False, "cost": None, "run": "0355fa8d"}
        for i in range(60)
    ]  # fmt: skip
    for value in (_DeltaSnapshot(usage), {"text": "The revision, word by word. " * 40}):
        kind, raw = serde.dumps_typed(value)
        assert kind.endswith("+zstd")
        for damaged in _flips(raw):
            with pytest.raises(UnsafePayloadError, match="corrupt"):
                serde.loads_typed((kind, damaged))
    blob = pack([(0, "usage", "json", json.dumps(usage[:3]).encode()), (1, "branch:to:revise", "null", b"")])
    assert blob[0] == 2  # compressed
    for damaged in _flips(blob):
        with pytest.raises(UnsafePayloadError):
            list(unpack(damaged))
    # frames written before they carried a checksum still read
    old = zstandard.ZstdCompressor(level=3).compress(ormsgpack.packb(usage))
    assert serde.loads_typed(("snapshot+zstd", old)).value == usage


@pytest.mark.postgres
async def test_a_damaged_snapshot_in_postgresql_is_refused_and_the_thread_reads_again_once_it_is_repaired(pg_url, stub):
    # a replica that never read the thread walks from the usage log's snapshot: a byte flipped in that row must end
    # the read with unsafe_payload (not a retryable storage error, and never other token counts)
    stub.configure(changes=[8])  # every revision differs from the one before: 17 loops, 35 calls
    thread = new_thread()
    settings = make_settings(pg_url, stub)
    async with open_persistence(settings) as p:
        await Runner(p, settings).refine(thread, "generic", "Snapshot me.", max_loops=17, similarity_threshold=1.0)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        version, blob = conn.execute(
            "SELECT version, blob FROM checkpoint_blobs WHERE thread_id = %s AND channel = 'usage' "
            "AND type = 'snapshot+zstd' ORDER BY version DESC LIMIT 1",
            (thread,),
        ).fetchone()
        set_blob = "UPDATE checkpoint_blobs SET blob = %s WHERE thread_id = %s AND channel = 'usage' AND version = %s"
        async with open_persistence(settings) as p:
            for at in range(20, len(blob), len(blob) // 12):  # a dozen places; without checksums some decoded
                damaged = bytearray(blob)
                damaged[at] ^= 0x5A
                conn.execute(set_blob, (bytes(damaged), thread, version))
                p.saver.seeds.forget(thread)  # as a replica that never decoded the snapshot
                with pytest.raises(UnsafePayloadError, match="corrupt") as refused:
                    await Runner(p, settings).status(thread)
                assert not refused.value.retryable
        conn.execute(set_blob, (blob, thread, version))
    async with open_persistence(settings) as p:
        view = await Runner(p, settings).status(thread)
    assert view["phase"] == "done" and view["usage"]["thread"]["calls"] == 35


def _plain_json_native(v) -> bool:
    """The definition ``serde._is_json_native`` implements faster."""
    if type(v) is dict:
        return all(type(k) is str and _plain_json_native(x) for k, x in v.items())
    if type(v) is list:
        return all(_plain_json_native(x) for x in v)
    if type(v) is float:
        return v == v and v not in (float("inf"), float("-inf"))
    return v is None or type(v) in (str, int, bool)


class _Str(str):
    pass


_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=3), st.binary(max_size=2),
    st.just(_Str("s")), st.just((1,)), st.just(b"x"), st.sampled_from([float("nan"), float("inf"), -float("inf")]),
)  # fmt: skip
_values = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=2), st.integers(0, 3)), inner, max_size=4),
    ),
    max_leaves=20,
)


@given(_values)
@example({"a": float("nan")})
@example([{"a": [1, {"b": float("-inf")}]}])
@example({1: "x"})
@example([[(1,)]])
@example({"a": [_Str("s")]})
@settings(max_examples=300)
def test_the_json_native_check_is_its_plain_definition(value):
    assert serde_module._is_json_native(value) is _plain_json_native(value)


@given(_values.filter(_plain_json_native))
def test_small_json_payloads_read_back_as_langgraph_reads_them(value):
    """Small JSON payloads skip LangGraph's reviver hook unless they hold an ``"lc"`` key; either way they read as
    LangGraph's own JSON path reads them."""
    serde = SafeSerializer()
    raw = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    stock = super(SafeSerializer, serde).loads_typed(("json", raw))
    assert serde.loads_typed(("json", raw)) == stock
    revivable = {"lc": 1, "type": "not_implemented", "id": ["x", "Y"], "repr": "Y()"}  # the stock path refuses it
    raw = json.dumps({"k": [revivable]}).encode()
    with pytest.raises(NotImplementedError):
        serde.loads_typed(("json", raw))


@pytest.mark.postgres
async def test_storage_grows_linearly_on_postgres(pg_url, stub):
    """Total bytes for a thread stay within 1.45x of its text at 50 loops (a plain list reducer is ~25x).

    Measured 1.37x: the compressed text (~0.3x), each step's checkpoint row, its task's writes in one row
    (graph/pglayout.py; 1.67x when each write was a row of its own) with the per-call usage and critic-score logs,
    and the delta channels' snapshots every 32 updates for flat long-thread reads (~0.17x; issue 19). Quadratic growth
    would still fail it by far; issue 19's own target (<= 1.0x) is reported, not met, by `make bench`.

    Text sizes are those of real model output (~3 KB revisions, ~120-word critiques). LangGraph spends a fixed
    ~1.2 KB per step on checkpoint rows, so much shorter texts give a higher ratio: bench/ reports the whole curve.
    """
    stub.configure(changes=[30], draft_words=450, critique_words=120)
    settings = make_settings(pg_url, stub)
    thread = new_thread()
    async with open_persistence(settings) as p:
        result = await Runner(p, settings).refine(
            thread, "generic", "Storage test.", max_loops=50, similarity_threshold=1.0
        )
    slot = result["slot"]
    assert len(slot["revision"]) == 50
    content = sum(len(t.encode()) for t in [slot["query"], slot["draft"], *slot["critique"], *slot["revision"]])
    with psycopg.connect(pg_url) as conn:
        total = sum(
            conn.execute(
                f"SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM {table} t WHERE thread_id = %s", (thread,)
            ).fetchone()[0]
            for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes")
        )
    assert total / content <= 1.45, f"{total} bytes for {content} bytes of text"


def test_bad_settings_are_clear_errors(monkeypatch):
    with pytest.raises(ConfigError, match="unsupported scheme 'mysql'"):
        load_settings(database_url="mysql://root@localhost/db")
    with pytest.raises(ConfigError, match="REDRAFT_DATABASE_URL"):
        load_settings(database_url="  ")
    monkeypatch.setenv("REDRAFT_COMPANIONS__CODE__SIMILARITY_THRESHOLD", "1.5")
    with pytest.raises(ConfigError, match=r"SIMILARITY_THRESHOLD.*less than or equal to 1"):
        load_settings()
    monkeypatch.setenv("REDRAFT_COMPANIONS__CODE__SIMILARITY_THRESHOLD", "0.9")
    monkeypatch.setenv("REDRAFT_COMPANIONS__CODE__MAX_LOOPS", "0")
    with pytest.raises(ConfigError, match=r"MAX_LOOPS.*greater than or equal to 1"):
        load_settings()
    monkeypatch.setenv("REDRAFT_COMPANIONS__CODE__MAX_LOOPS", "3")
    settings = load_settings()
    code = get_companion("code", settings.companions)
    assert (code.similarity_threshold, code.max_loops, code.temperature) == (0.9, 3, 0.2)
    assert backend_of("memory") == ("memory", ":memory:")
    assert backend_of("sqlite:////tmp/x.db") == ("sqlite", "/tmp/x.db")


async def test_unreachable_postgres_is_a_clear_error():
    settings = load_settings(database_url="postgresql://nobody:secret@127.0.0.1:1/none", request_timeout=2)
    with pytest.raises(StorageError) as info:  # retryable: the database may come back; not a settings problem
        async with open_persistence(settings):
            pass
    assert info.value.retryable and info.value.code == "storage_error"
    assert "Cannot connect to PostgreSQL" in str(info.value) and "secret" not in str(info.value)


@pytest.mark.postgres
async def test_pool_checks_only_connections_that_may_be_dead(pg_url):
    """Checkout skips the round-trip check for a connection that is plainly alive, yet a connection whose backend
    was terminated while it sat in the pool is caught and replaced: the caller never sees it."""
    from psycopg_pool import AsyncConnectionPool

    from redraft.graph.checkpointer import LivenessCheck

    full_checks = []

    async def counted(conn):
        full_checks.append(conn.info.backend_pid)
        await AsyncConnectionPool.check_connection(conn)

    liveness = LivenessCheck(counted)
    async with AsyncConnectionPool(
        pg_url, min_size=1, max_size=1, kwargs={"autocommit": True}, check=liveness.check, reset=liveness.returned
    ) as pool:
        async with pool.connection() as conn:  # first checkout: never returned before, so checked
            first_pid = (await (await conn.execute("SELECT pg_backend_pid()")).fetchone())[0]
        for _ in range(5):  # returned moments ago, socket quiet: no round trip
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
        assert full_checks == [first_pid]

        with psycopg.connect(pg_url, autocommit=True) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s)", (first_pid,)).fetchone()[0]
        await asyncio.sleep(0.2)  # the server's termination notice reaches the idle socket
        async with pool.connection() as conn:  # caught at checkout and replaced, not handed out
            pid = (await (await conn.execute("SELECT pg_backend_pid()")).fetchone())[0]
        assert pid != first_pid
        assert first_pid in full_checks

        liveness.idle_for = 0.0  # idle "too long": a silent TCP drop sends nothing, so long-idle ones are checked
        before = len(full_checks)
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
        assert len(full_checks) == before + 1
