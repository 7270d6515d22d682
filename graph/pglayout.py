"""How the PostgreSQL saver lays a thread out in LangGraph's own tables, more compactly than the stock saver.

Same tables, same columns, same keys: the stock SQL (reads, lists, prunes, copies) still runs on them. Every read
restores the stock values, so LangGraph, Studio and the conformance suite see what the stock saver would return.

**A task's writes in one row.** A durable step's task writes four channels (``run_log``, ``usage``, ``scores`` and
LangGraph's ``branch:to:*`` edge), each a row of ~175 bytes before its value: the thread, checkpoint and task ids
and the task path, repeated (at 50 loops, ~16% of a thread's bytes). So a task's regular writes of one call are
ONE row: type ``PACK_TYPE``, channel ``PACK_PREFIX`` followed by the channels it holds, comma-separated (so the delta
walk can fetch a pack only where one of the channels it reads was written: a channel's walk may span a thousand
checkpoints where it was never written), its primary key the batch's first ``idx``, and a blob holding each write's
``idx``, channel, serde type and serde bytes, unchanged. Readers expand a pack into the rows it stands
for, in the stock order. Special writes (errors, interrupts, resumes: negative ``idx``, upserted), LangGraph's own
``__``-prefixed channels, the null task's writes (LangGraph sends those again as they accumulate) and single writes
stay plain rows. A write kept both in a pack and as a plain row (possible only if one task's writes were sent twice
with different lengths) is read once, the pack's. Blob: a version byte, then per write ``>iBBI`` (idx, channel
length, type length, value length), channel, type, value.

**A slimmer checkpoint row**: see ``slim_checkpoint`` and ``slim_metadata`` below.

Rows written before this layout read as before. A redraft release from before it cannot read a pack (a clear serde
error, "unknown type") or the slim rows: do not downgrade past it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from langgraph.checkpoint.base import CheckpointTuple

from redraft.errors import UnsafePayloadError

PACK_PREFIX = "__redraft_pack__:"
PACK_TYPE = "pack"
NULL_TASK_ID = "00000000-0000-0000-0000-000000000000"  # langgraph._internal._constants (private there)
_VERSION = 1
_HEAD = struct.Struct(">iBBI")


def packable(channel: str, idx: int, blob: bytes | None) -> bool:
    """Whether a write may go into a pack: a regular write (not special, not LangGraph's own channel) with bytes."""
    return (
        idx >= 0
        and blob is not None
        and not channel.startswith("__")
        and "," not in channel
        and len(channel.encode()) < 256
    )


def is_pack(channel: str, type_: str) -> bool:
    return type_ == PACK_TYPE and channel.startswith(PACK_PREFIX)


def pack(writes: Iterable[tuple[int, str, str, bytes]]) -> bytes:
    """One blob for writes given as (idx, channel, serde type, serde bytes)."""
    parts = [bytes([_VERSION])]
    for idx, channel, type_, blob in writes:
        ch, ty = channel.encode(), type_.encode()
        parts += [_HEAD.pack(idx, len(ch), len(ty), len(blob)), ch, ty, blob]
    return b"".join(parts)


def unpack(blob: bytes) -> Iterator[tuple[int, str, str, bytes]]:
    """The writes of a pack, as (idx, channel, serde type, serde bytes), in the order they were written."""
    view = memoryview(blob)
    if not view or view[0] != _VERSION:
        raise UnsafePayloadError("Refused a pending-writes pack of an unknown format (a newer redraft wrote it?).")
    at, end = 1, len(view)
    try:
        while at < end:
            idx, n_ch, n_ty, n_blob = _HEAD.unpack_from(view, at)
            at += _HEAD.size
            channel = str(view[at : at + n_ch], "utf-8")
            type_ = str(view[at + n_ch : at + n_ch + n_ty], "utf-8")
            at += n_ch + n_ty
            if at + n_blob > end:
                raise ValueError("truncated")
            yield idx, channel, type_, bytes(view[at : at + n_blob])
            at += n_blob
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise UnsafePayloadError(f"Refused a corrupt pending-writes pack ({exc}).") from None


def packed_rows(rows: list[tuple]) -> list[tuple]:
    """Rows (thread, ns, checkpoint, task, path, idx, channel, type, blob), with each task's packable writes of one
    checkpoint folded into one pack row when there are two or more; other rows as they were, in order."""
    groups: dict[tuple, list[tuple]] = {}
    for row in rows:
        if row[3] != NULL_TASK_ID and packable(row[6], row[5], row[8]):
            groups.setdefault(row[:5], []).append(row)
    folded = {key: members for key, members in groups.items() if len(members) > 1}
    if not folded:
        return rows
    out, done = [], set()
    for row in rows:
        key = row[:5]
        members = folded.get(key)
        if members is None or not packable(row[6], row[5], row[8]):
            out.append(row)
        elif key not in done:
            done.add(key)
            members.sort(key=lambda r: r[5])
            blob = pack((r[5], r[6], r[7], r[8]) for r in members)
            channels = PACK_PREFIX + ",".join(dict.fromkeys(r[6] for r in members))
            out.append((*key, members[0][5], channels, PACK_TYPE, blob))
    return out


_PACK_PREFIX_B, _PACK_TYPE_B = PACK_PREFIX.encode(), PACK_TYPE.encode()


def _is_pack_b(channel: bytes, type_: bytes) -> bool:
    return type_ == _PACK_TYPE_B and channel.startswith(_PACK_PREFIX_B)


def expand_loaded(rows: list | None) -> list | None:
    """The stock saver's pending-write rows of one checkpoint, ``(task_id, channel, type, blob, task_path, idx)`` as
    bytes, with each pack replaced by the rows it holds."""
    if not rows or not any(_is_pack_b(r[1], r[2]) for r in rows):
        return rows
    out, packed = [], set()
    for r in rows:
        if _is_pack_b(r[1], r[2]):
            for idx, channel, type_, blob in unpack(r[3]):
                packed.add((r[0], idx))
                out.append((r[0], channel.encode(), type_.encode(), blob, r[4], str(idx).encode()))
    out += [r for r in rows if not _is_pack_b(r[1], r[2]) and (r[0], int(r[5])) not in packed]
    return out


def expand_stage2(rows: list[dict], channels: Iterable[str]) -> list[dict]:
    """The delta walk's second-stage rows (graph/pgsaver.py) with each pack replaced by its writes to ``channels``."""
    if not any(is_pack(r["channel"], r["type"]) for r in rows):
        return rows
    wanted = set(channels)
    out, packed = [], set()
    for r in rows:
        if is_pack(r["channel"], r["type"]):
            for idx, channel, type_, blob in unpack(r["blob"]):
                packed.add((r["checkpoint_id"], r["task_id"], idx))
                if channel in wanted:
                    out.append({**r, "channel": channel, "type": type_, "blob": blob, "idx": idx})
    out += [
        r
        for r in rows
        if not is_pack(r["channel"], r["type"])
        and (r["_kind"] != "w" or (r["checkpoint_id"], r["task_id"], r["idx"]) not in packed)
    ]
    return out


# --- the checkpoint row --------------------------------------------------------------------------------------------
# Per step, LangGraph's checkpoint row held ~860 bytes of checkpoint JSONB and ~360 of metadata. Two parts of them
# are stored more compactly, and restored on every read so LangGraph and the conformance suite see the stock values:
# * the checkpoint's ``id``, the row's own ``checkpoint_id`` column again (~45 bytes);
# * the metadata's ``counters_since_delta_snapshot`` (DeltaChannel's per-channel update and superstep counters), a
#   JSONB object of two-number arrays (~260 bytes), as one string ``"run_log=2,2;usage=2,2"`` (~60 bytes). The key
#   stays, so the stock prune's ``metadata ? 'counters_since_delta_snapshot'`` still finds delta threads.
COUNTERS = "counters_since_delta_snapshot"
_SEPARATORS = frozenset("=,;")


def slim_checkpoint(checkpoint: dict) -> dict:
    """The checkpoint as stored: without its ``id`` (a shallow copy; the caller's is not changed)."""
    return {k: v for k, v in checkpoint.items() if k != "id"}


def full_checkpoint(stored: dict, checkpoint_id: str) -> dict:
    """A stored checkpoint with its ``id`` back (rows written before this layout kept it)."""
    return stored if "id" in stored else {**stored, "id": checkpoint_id}


def slim_metadata(metadata: dict) -> dict:
    counters = metadata.get(COUNTERS)
    if not isinstance(counters, dict) or not counters:
        return metadata
    parts = []
    for channel, pair in counters.items():
        if _SEPARATORS & set(channel) or len(pair) != 2 or not all(type(n) is int for n in pair):
            return metadata  # not the shape LangGraph writes: kept as it is
        parts.append(f"{channel}={pair[0]},{pair[1]}")
    return {**metadata, COUNTERS: ";".join(parts)}


def full_metadata(metadata: dict) -> dict:
    counters = metadata.get(COUNTERS)
    if not isinstance(counters, str):
        return metadata
    try:
        pairs = (part.split("=") for part in counters.split(";"))
        expanded = {channel: [int(n) for n in numbers.split(",")] for channel, numbers in pairs}
    except ValueError:
        raise UnsafePayloadError(f"Refused corrupt checkpoint metadata: {COUNTERS} {counters[:80]!r}.") from None
    return {**metadata, COUNTERS: expanded}


def slim_row(checkpoint: dict, metadata: dict, compact: bool = True) -> tuple[dict, dict]:
    """The checkpoint and metadata columns of a row as stored: slimmed when ``compact``, else as the stock saver's."""
    return (slim_checkpoint(checkpoint), slim_metadata(metadata)) if compact else (checkpoint, metadata)


def loaded_tuple(row: dict, blobs: dict, writes: list) -> CheckpointTuple:
    """A checkpoint tuple from a row of the stock ``SELECT_SQL``, its blobs and pending writes loaded, with the
    stock checkpoint and metadata values restored (the stock saver's ``_load_checkpoint_tuple`` otherwise)."""
    checkpoint, parent = row["checkpoint"], row["parent_checkpoint_id"]
    head = {"thread_id": row["thread_id"], "checkpoint_ns": row["checkpoint_ns"]}
    return CheckpointTuple(
        {"configurable": {**head, "checkpoint_id": row["checkpoint_id"]}},
        {
            **full_checkpoint(checkpoint, row["checkpoint_id"]),
            "channel_values": {**(checkpoint.get("channel_values") or {}), **blobs},
        },
        full_metadata(row["metadata"]),
        {"configurable": {**head, "checkpoint_id": parent}} if parent else None,
        writes,
    )
