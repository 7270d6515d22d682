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
length, type length, value length), channel, type, value (version 1); or, when it is smaller, version 2: the same
body as one zstd frame against a fixed dictionary (``_DICTIONARY``: the names and keys every step writes -- the
channels, serde types, the usage and score entries' keys). A step's usage and score entries are ~250 bytes of JSON
that compress poorly alone and to ~70 bytes against it (a pack of ~650 bytes to ~400, ~8 us to compress and ~2 us to
read back).

**A slimmer checkpoint row**: see ``slim_checkpoint`` and ``slim_metadata`` below.

Rows written before this layout read as before. A redraft release from before it cannot read a pack (a clear serde
error, "unknown type") or the slim rows: do not downgrade past it.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Iterator

import zstandard
from langgraph.checkpoint.base import CheckpointTuple

from redraft.errors import UnsafePayloadError
from redraft.graph.serde import zstd_codecs

PACK_PREFIX = "__redraft_pack__:"
PACK_TYPE = "pack"
NULL_TASK_ID = "00000000-0000-0000-0000-000000000000"  # langgraph._internal._constants (private there)
_VERSION, _VERSION_ZSTD = 1, 2
_HEAD = struct.Struct(">iBBI")
_MAX_BODY = 256 * 1024 * 1024  # refuse to inflate a pack beyond this (a corrupt or hostile row)


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


def _body(writes: Iterable[tuple[int, str, str, bytes]]) -> bytes:
    parts = []
    for idx, channel, type_, blob in writes:
        ch, ty = channel.encode(), type_.encode()
        parts += [_HEAD.pack(idx, len(ch), len(ty), len(blob)), ch, ty, blob]
    return b"".join(parts)


# The dictionary of version-2 packs. FROZEN: every pack written with it needs these exact bytes to be read, so a
# change is a new pack version with a new dictionary (tests/test_pglayout.py pins its digest). Made of what a
# redraft step writes, with made-up values: two packs' bodies as a critique step and a revise step write them.
_DICTIONARY = b"".join(
    _body(writes)
    for writes in (
        [
            (0, "run_log", "json", b'{"op":"critique","slot":0,"n":1,"text":"'),
            (
                1,
                "usage",
                "json",
                b'{"slot":0,"node":"critique","n":1,"model":"","input_tokens":1200,'
                b'"output_tokens":150,"estimated":false,"cost":null,"run":"0a1b2c3d"}',
            ),
            (
                2,
                "scores",
                "json",
                b'{"slot":0,"iteration":1,"score":7,"critique":1,"issues":2,"done":false,'
                b'"requested":"json_schema","fallback":"no JSON object in the reply"}',
            ),
            (3, "branch:to:revise", "null", b""),
        ],
        [
            (0, "run_log", "json", b'{"op":"revision","slot":0,"n":1,"patch":"z1:'),
            (
                1,
                "usage",
                "json",
                b'{"slot":0,"node":"revise","n":1,"model":"","input_tokens":1200,'
                b'"output_tokens":600,"estimated":true,"cost":0.0012,"run":"0a1b2c3d"}',
            ),
            (2, "scores", "json", b'{"slot":0,"iteration":1,"similarity":0.5,"method":"text"}'),
            (3, "branch:to:critique", "null", b""),
            (4, "run_log", "json+zstd", b""),
        ],
    )
)
_ZDICT = zstandard.ZstdCompressionDict(_DICTIONARY, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def pack(writes: Iterable[tuple[int, str, str, bytes]]) -> bytes:
    """One blob for writes given as (idx, channel, serde type, serde bytes)."""
    body = _body(writes)
    frame = zstd_codecs(_ZDICT)[0].compress(body)
    return bytes([_VERSION_ZSTD]) + frame if len(frame) < len(body) else bytes([_VERSION]) + body


def unpack(blob: bytes) -> Iterator[tuple[int, str, str, bytes]]:
    """The writes of a pack, as (idx, channel, serde type, serde bytes), in the order they were written."""
    view = memoryview(blob)
    version = view[0] if view else None
    if version == _VERSION_ZSTD:
        try:
            view, at = memoryview(zstd_codecs(_ZDICT)[1].decompress(view[1:], max_output_size=_MAX_BODY)), 0
        except zstandard.ZstdError as exc:
            raise UnsafePayloadError(f"Refused a corrupt pending-writes pack ({exc}).") from None
    elif version == _VERSION:
        at = 1
    else:
        raise UnsafePayloadError("Refused a pending-writes pack of an unknown format (a newer redraft wrote it?).")
    end = len(view)
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
    """The delta walk's second-stage rows (graph/deltawalk.py) with each pack replaced by its writes to ``channels``."""
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
# Per step, LangGraph's checkpoint row held ~860 bytes of checkpoint JSONB and ~360 of metadata. Three parts of them
# are stored more compactly, and restored on every read so LangGraph and the conformance suite see the stock values:
# * the checkpoint's ``id``, the row's own ``checkpoint_id`` column again (~45 bytes);
# * its ``versions_seen`` (per node, the channel versions it last ran on: nested JSONB objects, ~270 bytes) and
#   ``updated_channels`` (~80 bytes) and its ``ts`` (~40 bytes), as ONE string under ``SEEN_KEY`` (~160 bytes): the
#   time's digits (LangGraph writes UTC ISO 8601), then the channel lists, with redraft's versions
#   (graph/checkpointer.py: ten digits, a dot, eight hex digits) without their leading zeros. No SQL reads them
#   (the stock SQL reads ``v``, ``channel_values`` and ``channel_versions``, which stay as they are). A checkpoint
#   whose values this cannot round-trip exactly (another version format, separators in a name, another time
#   format) keeps them as JSONB;
# * the metadata's ``counters_since_delta_snapshot`` (DeltaChannel's per-channel update and superstep counters), a
#   JSONB object of two-number arrays (~260 bytes), as one string ``"run_log=2,2;usage=2,2"`` (~60 bytes). The key
#   stays, so the stock prune's ``metadata ? 'counters_since_delta_snapshot'`` still finds delta threads.
COUNTERS = "counters_since_delta_snapshot"
_SEPARATORS = frozenset("=,;")
SEEN_KEY = "seen"
_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00")
_REC, _UNIT, _PAIR, _NONE = "\x1e", "\x1f", "\x1d", "\x1c"  # PostgreSQL's JSONB refuses \u0000


def _short_version(version: str) -> str:
    if len(version) == 19 and version[10] == "." and version[:10].isdigit():
        return version[:10].lstrip("0") + version[10:]
    return version


def _long_version(version: str) -> str:
    head, dot, tail = version.partition(".")
    return f"{head:0>10}{dot}{tail}" if dot and len(head) < 10 else version


def encode_seen(versions_seen: object, updated: object) -> str | None:
    """``versions_seen`` and ``updated_channels`` as one string, or None when they are not strings in dicts and a
    list. A separator inside a name reads back differently: callers keep the string only if ``decode_seen`` gives
    back what they encoded (``slim_checkpoint`` does)."""
    if type(versions_seen) is not dict or not (updated is None or type(updated) is list):
        return None
    try:
        records = [_NONE if updated is None else _UNIT.join(updated)]
        for node, seen in versions_seen.items():
            records.append(_UNIT.join([node, *[f"{ch}{_PAIR}{_short_version(v)}" for ch, v in seen.items()]]))
    except (TypeError, AttributeError):  # a name or version that is not a string, a node's map that is not a dict
        return None
    return _REC.join(records)


def decode_seen(text: str) -> tuple[dict, list | None]:
    first, *records = text.split(_REC)
    updated = None if first == _NONE else (first.split(_UNIT) if first else [])
    versions_seen: dict = {}
    for record in records:
        node, *pairs = record.split(_UNIT)
        seen = versions_seen[node] = {}
        for pair in pairs:
            ch, sep, version = pair.partition(_PAIR)
            if not sep:
                raise UnsafePayloadError(f"Refused a corrupt checkpoint: {SEEN_KEY} {text[:80]!r}.")
            seen[ch] = _long_version(version)
    return versions_seen, updated


def _ts_digits(ts: object) -> str:
    """LangGraph's checkpoint time (``datetime.now(timezone.utc).isoformat()``) as its digits, or "" when it is not
    in that form."""
    if type(ts) is not str or not _TS.fullmatch(ts):
        return ""
    return ts[0:4] + ts[5:7] + ts[8:10] + ts[11:13] + ts[14:16] + ts[17:19] + ts[20 : 26 if len(ts) == 32 else 20]


def _ts_iso(d: str) -> str:
    if not d.isdigit() or len(d) not in (14, 20):
        raise UnsafePayloadError(f"Refused a corrupt checkpoint: timestamp {d[:40]!r}.")
    fraction = f".{d[14:20]}" if len(d) == 20 else ""
    return f"{d[0:4]}-{d[4:6]}-{d[6:8]}T{d[8:10]}:{d[10:12]}:{d[12:14]}{fraction}+00:00"


def _reads_back(seen: str, versions_seen: dict, updated: list | None) -> bool:
    try:
        return decode_seen(seen) == (versions_seen, updated)
    except UnsafePayloadError:  # a separator inside a name
        return False


def slim_checkpoint(checkpoint: dict) -> dict:
    """The checkpoint as stored: without its ``id``; its ``ts`` (as its digits), ``versions_seen`` and
    ``updated_channels`` folded into one string when they read back exactly (a new dict; the caller's is not
    changed)."""
    stored = {k: v for k, v in checkpoint.items() if k != "id"}
    if "versions_seen" in stored and "updated_channels" in stored:
        vs, updated = stored["versions_seen"], stored["updated_channels"]
        seen = encode_seen(vs, updated)
        if seen is not None and _reads_back(seen, vs, updated):
            ts = _ts_digits(stored.get("ts"))
            for key in ("versions_seen", "updated_channels", *(("ts",) if ts else ())):
                del stored[key]
            stored[SEEN_KEY] = ts + _REC + seen
    return stored


def full_checkpoint(stored: dict, checkpoint_id: str) -> dict:
    """A stored checkpoint with its ``id``, ``ts``, ``versions_seen`` and ``updated_channels`` back (rows written
    before this layout kept them)."""
    if SEEN_KEY in stored:
        ts, _, seen = stored[SEEN_KEY].partition(_REC)
        versions_seen, updated = decode_seen(seen)
        stored = {k: v for k, v in stored.items() if k != SEEN_KEY}
        stored["versions_seen"], stored["updated_channels"] = versions_seen, updated
        if ts:
            stored["ts"] = _ts_iso(ts)
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
