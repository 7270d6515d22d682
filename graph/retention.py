"""Retention: what is deleted, and how, when sessions end, expire or grow old.

One primitive removes a session with its threads (LangGraph's checkpoint rows, through the saver) and background
runs; ``end_session``, the TTL sweep and ``prune`` all use it. ``prune`` deletes everything older than a cutoff
(``REDRAFT_RETENTION_DAYS``, ``redraft prune --older-than``; the server runs it from its sweep):

1. sessions idle since before the cutoff, with their threads and runs;
2. threads whose newest checkpoint is older than the cutoff and that belong to no live session (a session's
   deletion cut short, threads made outside sessions);
3. finished background-run records of sessions that are gone, and learning-stats rows older than the cutoff.

It never blocks running work: a thread whose step lease is held, or that has a queued or running background run,
is skipped (``skipped_busy``) and pruned on a later pass. Deletion takes its own lease (a tombstone, as
``end_session`` does), so no step can start on a thread being deleted, and goes one thread at a time, in batches
that yield to other work. A checkpoint's age is read from its id: LangGraph's checkpoint ids are UUIDv6, whose
text sorts by creation time, so "older than" is a comparison on the primary key, on every backend.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any

from redraft.errors import InvalidInputError, SessionBusyError
from redraft.graph.companions import COMPANION_MAP
from redraft.graph.database import TOMBSTONE, Database
from redraft.graph.runner import thread_id_for

BATCH = 100  # sessions or threads looked at per query
PAUSE_S = 0.005  # between batches: other work gets the database between them
PRUNE_EVERY_S = 3600.0  # the server prunes on its sweep at most this often
ACTIVE_RUNS = ("queued", "running")
_UUID_EPOCH = 0x01B21DD213814000  # 100-ns intervals from 1582-10-15 (the UUID epoch) to 1970-01-01
_AGE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)?\s*", re.IGNORECASE)
_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_age(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` (a bare number is days) -> seconds."""
    match = _AGE.fullmatch(text or "")
    seconds = float(match[1]) * _UNITS[(match[2] or "d").lower()] if match else 0.0
    if seconds <= 0:
        raise InvalidInputError(f"Not an age: {text!r}. Use a number and a unit: 30d, 12h, 90m, 45s or 2w.")
    return seconds


def threads_of(session_id: str) -> list[str]:
    """A session's threads: one per companion type."""
    return [thread_id_for(session_id, companion) for companion in COMPANION_MAP]


def session_of(thread_id: str) -> str | None:
    """The session a thread id names (``thread_id_for``'s ``<session>:<companion>``), if it names one."""
    return thread_id.rsplit(":", 1)[0] if ":" in thread_id else None


def checkpoint_id_at(ts: float) -> str:
    """The smallest UUIDv6 of time ``ts``: every checkpoint id made before ``ts`` sorts below it."""
    stamp = int(ts * 10_000_000) + _UUID_EPOCH
    value = ((stamp >> 12) & 0xFFFF_FFFF_FFFF) << 80 | (6 << 76) | (stamp & 0x0FFF) << 64 | 0x8000 << 48
    return str(uuid.UUID(int=value))


class Checkpoints:
    """Reads LangGraph's checkpoint rows for pruning (which threads, how much). Deleting goes through the saver."""

    def __init__(self, db: Database, saver: Any) -> None:
        self.db = db
        self.saver = saver
        self.kind = db.kind

    def _memory(self) -> dict:
        return getattr(self.saver, "storage", {})

    async def stale_threads(self, cutoff_id: str, after: str, limit: int) -> list[str]:
        """Threads after ``after`` (in id order) whose newest checkpoint was made before ``cutoff_id``'s time."""
        if self.kind == "memory":
            stale = sorted(
                t for t, spaces in self._memory().items() if t > after and _newest(spaces) < cutoff_id and spaces
            )
            return stale[:limit]
        rows = await self.db.fetchall(
            "SELECT thread_id FROM checkpoints WHERE thread_id > ? GROUP BY thread_id "
            "HAVING max(checkpoint_id) < ? ORDER BY thread_id LIMIT ?",
            (after, cutoff_id, limit),
        )
        return [r["thread_id"] for r in rows]

    async def measure(self, thread_ids: Sequence[str]) -> tuple[list[str], int, int]:
        """(threads that have checkpoints, checkpoint count, bytes stored) for ``thread_ids``."""
        if not thread_ids:
            return [], 0, 0
        if self.kind == "memory":
            storage = self._memory()
            present = [t for t in thread_ids if storage.get(t)]
            count = sum(len(ids) for t in present for ids in storage[t].values())
            return present, count, 0
        marks = ", ".join("?" * len(thread_ids))
        params = tuple(thread_ids)
        if self.kind == "postgres":
            size = "pg_column_size(checkpoint) + pg_column_size(metadata)"
            extra = [("checkpoint_blobs", "octet_length(blob)"), ("checkpoint_writes", "octet_length(blob)")]
        else:
            size = "coalesce(length(checkpoint), 0) + coalesce(length(metadata), 0)"
            extra = [("writes", "length(value)")]
        rows = await self.db.fetchall(
            f"SELECT thread_id, count(*) AS n, sum({size}) AS b FROM checkpoints "
            f"WHERE thread_id IN ({marks}) GROUP BY thread_id",
            params,
        )
        total = sum(int(r["b"] or 0) for r in rows)
        for table, column in extra:
            row = await self.db.fetchone(
                f"SELECT coalesce(sum({column}), 0) AS b FROM {table} WHERE thread_id IN ({marks})", params
            )
            total += int(row["b"] or 0) if row else 0
        return [r["thread_id"] for r in rows], sum(int(r["n"]) for r in rows), total


def _newest(spaces: dict) -> str:
    return max((cid for ids in spaces.values() for cid in ids), default="")


async def delete_threads(db: Database, saver: Any, thread_ids: Sequence[str], session_id: str | None = None) -> int:
    """Delete threads (already retired) with their background runs; the number that had checkpoints."""
    if session_id is not None:
        await db.execute("DELETE FROM redraft_runs WHERE session_id = ?", (session_id,))
    elif thread_ids:
        marks = ", ".join("?" * len(thread_ids))
        await db.execute(f"DELETE FROM redraft_runs WHERE thread_id IN ({marks})", tuple(thread_ids))
    present, _, _ = await Checkpoints(db, saver).measure(thread_ids)
    for thread_id in present:
        await saver.adelete_thread(thread_id)
    return len(present)


async def remove_session(db: Database, saver: Any, session_id: str, idle_before: float | None = None) -> int | None:
    """Delete a session with its threads and runs, atomically with respect to steps; the number of threads that
    had checkpoints. None (and nothing changed) if a step is running on one of its threads, or, with
    ``idle_before``, if the session was used since then (a call racing the deletion either renews it or finds it
    gone). Expiry deletes the row before the threads: if it is cut short, ``prune`` finds them as threads of no
    session."""
    threads = threads_of(session_id)
    try:
        await db.retire(threads)
    except SessionBusyError:
        return None
    if idle_before is None:  # ending: threads first, the row last, so that an end cut short can be called again
        deleted = await delete_threads(db, saver, threads, session_id)
        await db.execute("DELETE FROM redraft_sessions WHERE session_id = ?", (session_id,))
        return deleted
    # expiring: the row goes only if still idle (a call racing this either renews it or finds it gone)
    gone = await db.execute(
        "DELETE FROM redraft_sessions WHERE session_id = ? AND last_accessed < ?", (session_id, idle_before)
    )
    if gone != 1:
        await db.unretire(threads)
        return None
    return await delete_threads(db, saver, threads, session_id)


async def busy(db: Database, thread_ids: Sequence[str]) -> bool:
    """Whether work is under way on any of the threads: a live step lease, or a queued or running background run.
    (Deletion itself re-checks the lease atomically when it retires the threads.)"""
    marks = ", ".join("?" * len(thread_ids))
    runs = await db.fetchone(
        f"SELECT count(*) AS n FROM redraft_runs WHERE thread_id IN ({marks}) AND status IN ('queued', 'running')",
        tuple(thread_ids),
    )
    if runs and runs["n"]:
        return True
    running = getattr(db, "running", None)
    if running is not None:  # the memory backend keeps its leases in the process
        return any(t in running for t in thread_ids)
    leases = await db.fetchone(
        f"SELECT count(*) AS n FROM redraft_leases WHERE thread_id IN ({marks}) AND owner <> ? "
        f"AND expires_at >= {db.now_sql}",
        (*thread_ids, TOMBSTONE, *db.now_params),
    )
    return bool(leases and leases["n"])


async def prune(
    db: Database,
    saver: Any,
    older_than_s: float,
    *,
    dry_run: bool = False,
    batch_size: int = BATCH,
    now: float | None = None,
) -> dict[str, Any]:
    """Delete (or, with ``dry_run``, count) everything older than ``older_than_s`` seconds; what was freed."""
    started = time.monotonic()
    cutoff = (time.time() if now is None else now) - older_than_s
    store = Checkpoints(db, saver)
    report: dict[str, Any] = {
        "dry_run": dry_run,
        "older_than_s": older_than_s,
        "cutoff": cutoff,
        "sessions": 0,
        "threads": 0,
        "checkpoints": 0,
        "bytes": 0,
        "runs": 0,
        "stats": 0,
        "skipped_busy": 0,
    }

    def freed(present: list[str], checkpoints: int, size: int) -> None:
        report["threads"] += len(present)
        report["checkpoints"] += checkpoints
        report["bytes"] += size

    after = ""  # 1. sessions idle since before the cutoff
    while rows := await db.fetchall(
        "SELECT session_id FROM redraft_sessions WHERE last_accessed < ? AND session_id > ? "
        "ORDER BY session_id LIMIT ?",
        (cutoff, after, batch_size),
    ):
        after = rows[-1]["session_id"]
        for row in rows:
            threads = threads_of(row["session_id"])
            if await busy(db, threads):
                report["skipped_busy"] += 1
                continue
            measured = await store.measure(threads)
            if not dry_run and await remove_session(db, saver, row["session_id"], cutoff) is None:
                report["skipped_busy"] += 1  # a step started, or the session was used, in the meantime
                continue
            report["sessions"] += 1
            freed(*measured)
            await asyncio.sleep(0)
        await asyncio.sleep(PAUSE_S)

    after = ""  # 2. threads of no live session whose newest checkpoint is older than the cutoff
    cutoff_id = checkpoint_id_at(cutoff)
    while candidates := await store.stale_threads(cutoff_id, after, batch_size):
        after = candidates[-1]
        live = await _existing_sessions(db, {s for s in map(session_of, candidates) if s is not None})
        for thread_id in candidates:
            if session_of(thread_id) in live:  # kept while its session lives (in a dry run: counted above)
                continue
            if await busy(db, [thread_id]):
                report["skipped_busy"] += 1
                continue
            measured = await store.measure([thread_id])
            if not dry_run:
                try:
                    await db.retire([thread_id])
                except SessionBusyError:
                    report["skipped_busy"] += 1
                    continue
                await delete_threads(db, saver, [thread_id])
            freed(*measured)
            await asyncio.sleep(0)
        await asyncio.sleep(PAUSE_S)

    # 3. finished run records of sessions that are gone, and old learning stats
    report["runs"] = await _delete_in_batches(
        db,
        "redraft_runs",
        "run_id",
        "updated_at < ? AND status NOT IN ('queued', 'running') "
        "AND session_id NOT IN (SELECT session_id FROM redraft_sessions)",
        (cutoff,),
        batch_size,
        dry_run,
    )
    report["stats"] = await _delete_in_batches(
        db, "redraft_stats", "id", "created_at < ?", (cutoff,), batch_size, dry_run
    )
    if not dry_run:
        await db.forget_tombstones()
    report["elapsed_s"] = round(time.monotonic() - started, 3)
    return report


async def _existing_sessions(db: Database, session_ids: set[str]) -> set[str]:
    if not session_ids:
        return set()
    ids = sorted(session_ids)
    rows = await db.fetchall(
        f"SELECT session_id FROM redraft_sessions WHERE session_id IN ({', '.join('?' * len(ids))})", tuple(ids)
    )
    return {r["session_id"] for r in rows}


async def _delete_in_batches(
    db: Database, table: str, key: str, where: str, params: tuple, batch_size: int, dry_run: bool
) -> int:
    if dry_run:
        row = await db.fetchone(f"SELECT count(*) AS n FROM {table} WHERE {where}", params)
        return int(row["n"]) if row else 0
    total = 0
    while True:
        deleted = await db.execute(
            f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} WHERE {where} LIMIT ?)",
            (*params, batch_size),
        )
        total += max(deleted, 0)
        if deleted < batch_size:
            return total
        await asyncio.sleep(PAUSE_S)


class Pruner:
    """``prune`` on a schedule, for the server's sweep: with ``retention_days`` > 0, at most once every
    ``PRUNE_EVERY_S`` (or the retention period, if that is shorter), starting with the first call."""

    def __init__(self, db: Database, saver: Any, retention_days: float) -> None:
        self.db = db
        self.saver = saver
        self.older_than_s = retention_days * 86400.0
        self.every = min(PRUNE_EVERY_S, self.older_than_s)
        self.last: float | None = None

    async def maybe(self) -> dict[str, Any] | None:
        if self.older_than_s <= 0 or (self.last is not None and time.monotonic() - self.last < self.every):
            return None
        self.last = time.monotonic()
        return await prune(self.db, self.saver, self.older_than_s)


def freed_summary(report: dict[str, Any]) -> str:
    """One line for logs and the CLI: what a prune freed (or would free)."""
    verb = "would free" if report["dry_run"] else "freed"
    return (
        f"{verb} {report['sessions']} session(s), {report['threads']} thread(s), {report['checkpoints']} "
        f"checkpoint(s) ({_size(report['bytes'])}), {report['runs']} run record(s), {report['stats']} stats row(s); "
        f"{report['skipped_busy']} skipped as busy"
    )


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
