"""redraft's PostgreSQL saver: ``AsyncPostgresSaver`` without its global lock, one statement per write, fenced.

The stock saver serialises every call of the process on one lock, moves each write's serialisation to a thread
(``asyncio.to_thread``: a thread hop and a GIL hand-off per write, ~13% of a durable step's CPU in a profile) and
sends each write as a pipelined transaction: BEGIN, one statement per blob, the checkpoint, COMMIT. Here:

* with a pool, calls take their own pooled connection and run side by side;
* a write is serialised inline (the values are a few KB) and sent as ONE statement in autocommit -- blobs and the
  checkpoint (or all of a task's pending writes) in one ``INSERT ... SELECT FROM unnest(...)`` -- so one round trip
  and one implicit transaction, with no BEGIN/COMMIT or pipeline sync;
* while a step holds its lease (``FENCE``), the same statement first runs ``redraft_fence_check``
  (``graph/fencing.py``): a statement is atomic, so a write whose lease was lost commits nothing;
* under a lease, a task's pending writes are held back (``DEFERRED``) and go out in the next checkpoint's statement:
  one commit per durable step instead of two. What no checkpoint took along (a run stopped at a gate or by an error)
  is sent when the lease ends, before it is released; a read under the lease sends it first. A crash in between
  loses the writes of a step whose checkpoint was never committed -- the step in flight, which a resume runs again.
  Outside a lease (``update_state`` from Studio, another process) writes go out at once, as with the stock saver;
* a task's regular writes of one call are one row, a pack (graph/pglayout.py): one row per step instead of ~four,
  each repeating the thread, checkpoint and task ids. Reads expand packs back into the stock rows.

Under a lease nobody else writes the thread, so a checkpoint or delta history read twice in one step (the runner's
phase check, then the graph's own load) is read from the database once; any write under the lease forgets it. A
step at the checkpoint this process's last run on the thread ended at starts from that run's values
(graph/headcache.py) and walks nothing.

A checkpoint read loads its pending writes inline: the stock saver hands them to a worker thread, a thread hop per
read for a few KB of JSON.

Reading a delta channel (``aget_delta_channel_history``) is LangGraph's two-stage walk, made to cost about the same
at 1,000 checkpoints as at 10 (graph/deltawalk.py), unless the step starts from this process's last run. The walk
reuses the snapshots this process decoded before (graph/seedcache.py). Other reads, listing, deletes and copies are
the stock saver's, on a pooled connection. It passes ``langgraph-checkpoint-conformance`` (tests/test_conformance.py),
fenced and not.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    CheckpointTuple,
    copy_checkpoint,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
)
from langgraph.checkpoint.serde.types import _DeltaSnapshot
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from redraft.errors import RedraftError
from redraft.graph.database import is_driver_error, storage_error
from redraft.graph.deltawalk import DeltaWalk
from redraft.graph.fencing import DEFERRED, FENCE, DeferredWrites, deadline, is_lease_lost, lease_lost
from redraft.graph.headcache import RemembersLastRun
from redraft.graph.pglayout import expand_loaded, loaded_tuple, packed_rows, slim_row
from redraft.observability import metrics

_FENCE_CTE = "fence AS (SELECT redraft_fence_check(%s, %s))"

# the lease goes with the step's last writes; EXISTS makes the fence check run first (it takes a share lock on the row)
_RELEASE_CTE = """released AS (
    DELETE FROM redraft_leases WHERE thread_id = %s AND token = %s AND EXISTS (SELECT 1 FROM fence)
)"""

_BLOBS_CTE = """blobs AS (
    INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
    SELECT %s, %s, u.channel, u.version, u.type, u.blob
    FROM unnest(%s::text[], %s::text[], %s::text[], %s::bytea[]) AS u(channel, version, type, blob)
    ON CONFLICT (thread_id, checkpoint_ns, channel, version) DO NOTHING
)"""

_PUT_CHECKPOINT = """
INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, metadata)
SELECT %s, %s, %s, %s, %s, %s {source}
ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id)
DO UPDATE SET checkpoint = EXCLUDED.checkpoint, metadata = EXCLUDED.metadata"""

_WRITES_CTE = """{name} AS (
    INSERT INTO checkpoint_writes
        (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob)
    SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::int[], %s::text[],
                         %s::text[], %s::bytea[])
    ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) {action}
)"""

_UPSERT = "DO UPDATE SET channel = EXCLUDED.channel, type = EXCLUDED.type, blob = EXCLUDED.blob"


def _copied(history: dict) -> dict:
    """A delta history for one more reader: its own lists (the values are replayed through copy-on-write reducers)."""
    return {ch: {**entry, "writes": list(entry["writes"])} for ch, entry in history.items()}


def _copied_tuple(found: CheckpointTuple) -> CheckpointTuple:
    """A checkpoint tuple for one more reader: the pregel loop updates a loaded checkpoint's version maps in place.
    Channel values are shared: the channels replay onto them through copy-on-write reducers (graph/state.py)."""
    return found._replace(checkpoint=copy_checkpoint(found.checkpoint), pending_writes=list(found.pending_writes or ()))


def _forget_reads() -> None:
    deferred = DEFERRED.get()
    if deferred is not None:
        deferred.forget_reads()


def _writes_ctes(batches: list[tuple[bool, list[tuple]]], compact: bool) -> tuple[list[str], list]:
    """CTEs inserting pending-write rows (thread, ns, checkpoint, task, path, idx, channel, type, blob), as the
    stock saver would over its calls in order: a batch of special writes (upsert) replaces a row, any other batch
    keeps the row already there. Rows are merged per key first, since one statement may touch a row only once;
    then, when ``compact``, a task's regular writes are folded into one row (graph/pglayout.py)."""
    upserts: dict[tuple, tuple] = {}
    inserts: dict[tuple, tuple] = {}
    for upsert, rows in batches:
        for row in rows:
            key = (*row[:4], row[5])
            if upsert:
                upserts[key] = row
                inserts.pop(key, None)
            elif key not in upserts and key not in inserts:
                inserts[key] = row
    ctes, params = [], []
    for name, rows, action in (
        ("wu", list(upserts.values()), _UPSERT),
        ("wi", packed_rows(list(inserts.values())) if compact else list(inserts.values()), "DO NOTHING"),
    ):
        if rows:
            ctes.append(_WRITES_CTE.format(name=name, action=action))
            params += [list(column) for column in zip(*rows, strict=True)]
    return ctes, params


class FencedPostgres(DeltaWalk, RemembersLastRun):
    """Mixed in before ``AsyncPostgresSaver`` (see the module docstring)."""

    statement_timeout = 30.0
    compact = True  # write graph/pglayout.py's compact rows (settings.db_compact_layout); reads take both layouts

    @contextlib.asynccontextmanager
    async def _cursor(self, *, pipeline: bool = False) -> AsyncIterator[Any]:
        """The stock saver's cursor (reads, deletes, copies), without the global lock on a pool; a ``pipeline``
        write made while a step holds its lease starts its transaction with the fence check."""
        fence = FENCE.get() if pipeline else None
        async with self._connection("checkpoint write" if pipeline else "checkpoint read", fence) as conn:
            async with contextlib.AsyncExitStack() as stack:
                if pipeline:
                    await stack.enter_async_context(conn.pipeline())
                    await stack.enter_async_context(conn.transaction())
                cur = await stack.enter_async_context(conn.cursor(binary=True, row_factory=dict_row))
                if fence is not None:
                    await cur.execute("SELECT redraft_fence_check(%s, %s)", (fence.thread_id, fence.token))
                yield cur

    @contextlib.asynccontextmanager
    async def _connection(self, what: str, fence) -> AsyncIterator[Any]:
        """A connection (pooled, or the single shared one under the saver's lock), bounded in time, with driver
        errors mapped to ``StorageError`` and a failed fence check to ``LeaseLostError``."""
        try:
            async with deadline(self.statement_timeout, what):
                if not hasattr(self.conn, "connection"):  # a single shared connection needs the saver's lock
                    async with self.lock:
                        yield self.conn
                else:
                    async with self.conn.connection() as conn:
                        yield conn
        except RedraftError:
            raise
        except Exception as exc:
            if fence is not None and is_lease_lost(exc):
                raise lease_lost(fence.thread_id) from None
            if is_driver_error(exc):
                raise storage_error(exc) from None
            raise

    async def _write(self, sql: str, ctes: list[str], params: list, fenced_source: str) -> None:
        """One statement: ``ctes`` feeding ``sql``, and first the fence check while a step holds its lease (its
        one row joined in as ``fenced_source``, so the check runs before anything is written)."""
        fence = FENCE.get()
        if fence is not None:
            ctes = [_FENCE_CTE, *ctes]
            params = [fence.thread_id, fence.token, *params]
        text = ("WITH " + ",\n".join(ctes) if ctes else "") + sql.replace(
            "{source}", fenced_source if fence is not None else ""
        )
        async with self._connection("checkpoint write", fence) as conn:
            await conn.execute(text, params, binary=True)

    async def send_deferred(self, deferred: DeferredWrites, release: bool = False) -> None:
        """Send the writes held back under a lease (graph/leases.py, graph/fencing.py ``DEFERRED``): one statement,
        which with ``release`` also deletes the fence's lease row once its check passed (a step stopped at a gate
        ends in one round trip instead of two)."""
        batches, deferred.batches = deferred.batches, []
        await self._send_writes(batches, release=release)

    async def _send_writes(self, batches: list[tuple[bool, list[tuple]]], release: bool = False) -> None:
        if batches:
            ctes, params = _writes_ctes(batches, self.compact)
            fence = FENCE.get()
            if release and fence is not None:
                ctes.append(_RELEASE_CTE)
                params += [fence.thread_id, fence.token]
            await self._write("\nSELECT 1 {source}", ctes, params, "FROM fence")

    def _load_writes(self, writes):
        return super()._load_writes(expand_loaded(writes))

    async def _load_checkpoint_tuple(self, value) -> CheckpointTuple:
        """The stock loader, its pending writes loaded inline instead of on a worker thread (a few KB: the hop cost
        more than the work), with the stock values restored (graph/pglayout.py)."""
        return loaded_tuple(
            value, self._load_blobs(value["channel_values"]), self._load_writes(value["pending_writes"])
        )

    def _lease_state(self) -> DeferredWrites | None:
        """The running step's held-back writes and reads, if this saver holds them (or none yet): the state it may
        defer writes to and serve repeated reads from."""
        deferred = DEFERRED.get()
        return deferred if deferred is not None and deferred.saver in (None, self) else None

    async def aget_tuple(self, config):
        deferred = DEFERRED.get()
        if deferred is not None and deferred.batches:  # a read under the lease sees the step's own writes
            await deferred.flush()
        deferred = self._lease_state()
        if deferred is None:
            return await super().aget_tuple(config)
        # Under the lease nobody else writes this thread, so a step's second read of a checkpoint (the runner's
        # phase check, then the graph's own load) is the first one's; any write under the lease clears it.
        configurable = config["configurable"]
        key = (configurable["thread_id"], configurable.get("checkpoint_ns", ""), get_checkpoint_id(config))
        found = deferred.tuples.get(key)
        if found is None:
            found = await super().aget_tuple(config)
            if found is None:
                return None
            deferred.tuples = {key: found, (*key[:2], found.config["configurable"]["checkpoint_id"]): found}
        return _copied_tuple(found)

    async def adelete_thread(self, thread_id: str) -> None:
        _forget_reads()
        self.heads.forget(thread_id)
        self.seeds.forget(thread_id)
        await super().adelete_thread(thread_id)

    async def aprune(self, thread_ids, *args, **kwargs) -> None:
        _forget_reads()
        self.heads.forget(*thread_ids)
        self.seeds.forget(*thread_ids)
        await super().aprune(thread_ids, *args, **kwargs)

    async def alist(self, config, **kwargs):
        deferred = DEFERRED.get()
        if deferred is not None and deferred.batches:
            await deferred.flush()
        async for item in super().alist(config, **kwargs):
            yield item

    async def aget_delta_channel_history(self, *, config, channels):
        """The stock walk (LangGraph's two stages: ancestors' versions and seed probes, then the writes and seed
        blobs), paged from a small first page up: the stock saver reads 1,024 ancestor rows per page, each with a
        blob probe per channel, so a head read cost O(thread length) even when every seed was a few rows back."""
        if not channels:
            return {}
        channels = list(channels)
        thread_id = config["configurable"]["thread_id"]
        checkpoint_ns = config["configurable"].get("checkpoint_ns", "")
        checkpoint_id = get_checkpoint_id(config)
        if not checkpoint_id:
            target = await self.aget_tuple(config)
            if target is None:
                return {ch: {"writes": []} for ch in channels}
            checkpoint_id = target.config["configurable"]["checkpoint_id"]
        deferred = self._lease_state()
        key = (thread_id, checkpoint_ns, checkpoint_id, tuple(channels))
        if deferred is not None and key in deferred.histories:
            return _copied(deferred.histories[key])
        if deferred is None:
            return await self._delta_history(thread_id, checkpoint_ns, checkpoint_id, channels)
        # a step: from the checkpoint this process's last run on the thread committed, if that is it (headcache.py)
        history = self.heads.histories(*key[:3], channels)
        metrics.history_read("walk" if history is None else "last_run")
        if history is None:
            history = await self._delta_history(thread_id, checkpoint_ns, checkpoint_id, channels)
        deferred.histories = {key: history}
        return _copied(history)

    async def aput(self, config, checkpoint, metadata, new_versions) -> dict:
        configurable = config["configurable"]
        thread_id = configurable["thread_id"]
        checkpoint_ns = configurable.get("checkpoint_ns", "")
        parent_id = configurable.get("checkpoint_id")
        copy = checkpoint.copy()
        values = copy["channel_values"] = dict(checkpoint["channel_values"])
        blob_values = {}
        for k, v in checkpoint["channel_values"].items():  # inline primitives in the row, the rest as blobs
            if isinstance(v, _DeltaSnapshot):
                blob_values[k] = values.pop(k)
                values[k] = True
            elif v is not None and not isinstance(v, (str, int, float, bool)):
                blob_values[k] = values.pop(k)
        _forget_reads()
        deferred = DEFERRED.get()
        ctes, params = [], []
        if deferred is not None and deferred.batches and deferred.saver is self:  # the step's writes ride along
            ctes, params = _writes_ctes(deferred.batches, self.compact)
            deferred.batches = []
        if blobs := self._dump_blobs(
            thread_id, checkpoint_ns, blob_values, {k: v for k, v in new_versions.items() if k in blob_values}
        ):
            ctes.append(_BLOBS_CTE)
            params += [thread_id, checkpoint_ns, *(list(column) for column in list(zip(*blobs, strict=True))[2:])]
        params += [
            thread_id,
            checkpoint_ns,
            checkpoint["id"],
            parent_id,
            *(
                Jsonb(part)
                for part in slim_row(copy, get_serializable_checkpoint_metadata(config, metadata), self.compact)
            ),
        ]
        await self._write(_PUT_CHECKPOINT, ctes, params, "FROM fence")
        return {
            "configurable": {"thread_id": thread_id, "checkpoint_ns": checkpoint_ns, "checkpoint_id": checkpoint["id"]}
        }

    async def aput_writes(self, config, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = "") -> None:
        if not writes:
            return
        configurable = config["configurable"]
        head = (configurable["thread_id"], configurable.get("checkpoint_ns", ""), configurable["checkpoint_id"])
        rows = [
            (*head, task_id, task_path, WRITES_IDX_MAP.get(channel, idx), channel, *self.serde.dumps_typed(value))
            for idx, (channel, value) in enumerate(writes)
        ]
        batch = (all(w[0] in WRITES_IDX_MAP for w in writes), rows)
        _forget_reads()
        deferred = self._lease_state()
        if deferred is not None:  # under a lease: goes with the next checkpoint
            deferred.saver = self
            deferred.batches.append(batch)
            return
        await self._send_writes([batch])
