"""A thin async handle on the database that holds the checkpoints, for redraft's own small tables (sessions, stats,
leases). SQL is written once with ``?`` placeholders; the Postgres backend rewrites them to ``%s``.

Every call is bounded by ``statement_timeout`` and every driver failure becomes a retryable ``StorageError``, on every
table. The step-lease primitives (grant with a fencing token, renew, release, retire) live with each backend: PostgreSQL
here, SQLite and ``memory`` in ``graph/sqlitedb.py``; the lease's lifecycle (heartbeat, self-abort) is in
``graph/leases.py``.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import socket
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from redraft.errors import ConflictError, RedraftError, SessionBusyError, SessionNotFoundError, StorageError
from redraft.graph.fencing import PG_FENCE_FUNCTION, deadline
from redraft.observability import metrics

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS redraft_sessions (
        session_id TEXT PRIMARY KEY,
        principal TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        last_accessed DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS redraft_sessions_accessed ON redraft_sessions (last_accessed)",
    """CREATE TABLE IF NOT EXISTS redraft_stats (
        id TEXT PRIMARY KEY,
        companion TEXT NOT NULL,
        kind TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        iterations INTEGER,
        final_similarity DOUBLE PRECISION,
        stop_reason TEXT,
        duration_s DOUBLE PRECISION,
        detail TEXT,
        model TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS redraft_stats_companion ON redraft_stats (companion, kind)",
    "CREATE INDEX IF NOT EXISTS redraft_stats_created ON redraft_stats (created_at)",  # retention (graph/retention.py)
    # a companion's most recent runs in order, from the index alone (server/stats.py)
    "CREATE INDEX IF NOT EXISTS redraft_stats_recent ON redraft_stats (companion, kind, created_at)",
    # the learned summary status and refine show, kept with the window of runs it was computed from (their
    # count, newest and oldest time; server/stats.py): recomputed by whichever replica first finds the window
    # changed, never used otherwise
    """CREATE TABLE IF NOT EXISTS redraft_stats_summary (
        companion TEXT PRIMARY KEY,
        runs INTEGER NOT NULL,
        newest DOUBLE PRECISION NOT NULL,
        oldest DOUBLE PRECISION NOT NULL,
        summary TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS redraft_leases (
        thread_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    )""",
    # background runs (graph/runs.py): one row per run, whichever worker or view (run id / MCP task id) it has
    """CREATE TABLE IF NOT EXISTS redraft_runs (
        run_id TEXT PRIMARY KEY,
        thread_id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        companion TEXT NOT NULL,
        principal TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        multitask_strategy TEXT NOT NULL,
        request TEXT NOT NULL,
        base_checkpoint TEXT,
        first_checkpoint TEXT,
        last_checkpoint TEXT,
        error_code TEXT,
        error_message TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        loop INTEGER NOT NULL DEFAULT 0,
        steps INTEGER NOT NULL DEFAULT 0,
        last_similarity DOUBLE PRECISION,
        tokens INTEGER NOT NULL DEFAULT 0,
        progress_message TEXT,
        phase TEXT,
        result TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        updated_at DOUBLE PRECISION NOT NULL,
        worker TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS redraft_runs_thread ON redraft_runs (thread_id, status)",
]
# Fencing tokens (graph/fencing.py): a lease row names the grant holding it; tokens come from a sequence that only
# grows, so a token is never handed out twice, even after its row was deleted.
PG_SCHEMA = [
    "ALTER TABLE redraft_leases ADD COLUMN IF NOT EXISTS token BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE redraft_stats ADD COLUMN IF NOT EXISTS model TEXT",  # stats by model (server/stats.py)
    "CREATE SEQUENCE IF NOT EXISTS redraft_fence",
    PG_FENCE_FUNCTION,
]
SQLITE_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS redraft_fence (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO redraft_fence (id, value) VALUES (1, 0)",
    # a grant takes the counter's next value in its own statement; these keep the counter at the highest token
    """CREATE TRIGGER IF NOT EXISTS redraft_fence_on_insert AFTER INSERT ON redraft_leases
    BEGIN UPDATE redraft_fence SET value = max(value, NEW.token) WHERE id = 1; END""",
    """CREATE TRIGGER IF NOT EXISTS redraft_fence_on_update AFTER UPDATE OF token ON redraft_leases
    BEGIN UPDATE redraft_fence SET value = max(value, NEW.token) WHERE id = 1; END""",
]
# An ended session's threads keep a tombstone lease this long, so a step that validated the session just before it
# ended cannot write into its deleted threads afterwards.
TOMBSTONE = "ended"
TOMBSTONE_SECONDS = 3600.0
OWNER = f"{socket.gethostname()}:{os.getpid()}"
DRIVER_MODULES = ("psycopg", "psycopg_pool", "sqlite3", "aiosqlite")


@dataclass
class Lease:
    thread_id: str
    token: int
    lost: bool = False


@dataclass(frozen=True)
class SessionCheck:
    """The session a call names: it must be the caller's and live (accessed within ``ttl`` seconds). Its access is
    recorded when the recorded one is older than ``touch_every``. Set in ``SESSION_CHECK`` by a call whose step takes
    its thread's lease, the check runs in the grant itself (one statement on PostgreSQL) instead of a read before."""

    principal: str
    session_id: str
    ttl: float
    touch_every: float


SESSION_CHECK: contextvars.ContextVar[SessionCheck | None] = contextvars.ContextVar("redraft_session", default=None)

_LIVE = "session_id = ? AND principal = ? AND last_accessed >= ?"


class Database:
    kind = "abstract"
    # Seconds a step lease lives without a heartbeat; a crashed holder blocks its thread at most this long.
    lease_ttl = 10.0
    # Seconds any one call on redraft's tables may take before it fails with a StorageError.
    statement_timeout = 30.0

    # --- statements -----------------------------------------------------------------------------------------------

    async def _execute(self, sql: str, params: tuple) -> int: ...

    async def _fetchall(self, sql: str, params: tuple) -> list[dict[str, Any]]: ...

    async def execute(self, sql: str, params: tuple = ()) -> int:
        async with self.guarded():
            return await self._execute(sql, params)

    async def fetchall(self, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
        async with self.guarded():
            return await self._fetchall(sql, params)

    async def fetchone(self, sql: str, params: tuple = ()) -> dict[str, Any] | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    @contextlib.asynccontextmanager
    async def guarded(self) -> AsyncIterator[None]:
        """Bound a call in time and turn any driver failure into a retryable StorageError."""
        try:
            async with deadline(self.statement_timeout):
                yield
        except RedraftError:
            raise
        except Exception as exc:
            if is_driver_error(exc):
                raise storage_error(exc) from None
            raise

    async def execute_serialised(self, sql: str, params: tuple = ()) -> int:
        """Execute one statement that reads and writes the same table, serialised against every other such call on
        the database (a count-then-insert cap is exact). SQLite serialises writers already."""
        return await self.execute(sql, params)

    async def setup(self) -> None:
        for statement in SCHEMA:
            await self.execute(statement)

    # --- step leases ----------------------------------------------------------------------------------------------

    async def grant(self, thread_id: str) -> Lease:
        """A lease on the thread with a fresh fencing token; ConflictError if a live one is held elsewhere."""
        raise NotImplementedError

    async def grant_checked(self, thread_id: str, check: SessionCheck | None) -> Lease:
        """``grant``, after ``check`` passes (SessionNotFoundError if it does not): two statements here, one on
        PostgreSQL."""
        if check is not None:
            await self.touch_session(check)
        return await self.grant(thread_id)

    async def touch_session(self, check: SessionCheck) -> None:
        """SessionNotFoundError unless the session is the caller's and live; records the access (a write only when
        the recorded one is older than ``touch_every``: a write is a commit, and this runs before every call that
        names a session)."""
        now = time.time()
        live = (check.session_id, check.principal, now - check.ttl)
        row = await self.fetchone(f"SELECT last_accessed FROM redraft_sessions WHERE {_LIVE}", live)
        if row is None:
            raise SessionNotFoundError()
        if row["last_accessed"] < now - check.touch_every:
            if await self.execute(f"UPDATE redraft_sessions SET last_accessed = ? WHERE {_LIVE}", (now, *live)) != 1:
                raise SessionNotFoundError()

    async def renew(self, lease: Lease) -> bool:
        """Extend the lease; False if it is no longer ours (another grant replaced it)."""
        return (
            await self.execute(
                f"UPDATE redraft_leases SET expires_at = {self.now_sql} + ? WHERE thread_id = ? AND token = ?",
                (*self.now_params, self.lease_ttl, lease.thread_id, lease.token),
            )
            == 1
        )

    async def release(self, lease: Lease) -> None:
        await self.execute(
            "DELETE FROM redraft_leases WHERE thread_id = ? AND token = ?", (lease.thread_id, lease.token)
        )

    async def retire(self, thread_ids: Iterable[str]) -> None:
        """Atomically tombstone the leases of threads about to be deleted: SessionBusyError (and nothing changed) if
        a step is running on any of them. Later grants on them fail as an unknown session."""
        raise NotImplementedError

    async def unretire(self, thread_ids: Iterable[str]) -> None:
        """Undo ``retire`` (a sweep found the session in use after all)."""
        for thread_id in thread_ids:
            await self.execute("DELETE FROM redraft_leases WHERE thread_id = ? AND owner = ?", (thread_id, TOMBSTONE))

    async def forget_tombstones(self) -> int:
        return await self.execute(
            f"DELETE FROM redraft_leases WHERE owner = ? AND expires_at < {self.now_sql}", (TOMBSTONE, *self.now_params)
        )

    @property
    def now_sql(self) -> str:
        return "?"

    @property
    def now_params(self) -> tuple:
        return (time.time(),)

    def thread_lock(self, thread_id: str):
        """Hold a fenced, heart-beaten lease on a thread for one step (see ``graph/leases.py``)."""
        from redraft.graph.leases import hold

        return hold(self, thread_id)


def _pg(sql: str) -> str:
    """``?`` placeholders to psycopg's ``%s``; a literal ``%`` (as in LIKE patterns) must be doubled first."""
    return sql.replace("%", "%%").replace("?", "%s")


def lease_refused(owner: str | None) -> RedraftError:
    if owner == TOMBSTONE:
        return SessionNotFoundError()
    return ConflictError("Another step is running on this thread; retry when it has finished.")


class PostgresDatabase(Database):
    kind = "postgres"
    # The database's clock, not the replica's: lease expiry must not depend on clock skew between replicas.
    now_sql = "extract(epoch from clock_timestamp())"
    now_params = ()

    def __init__(self, pool) -> None:
        self.pool = pool

    async def _execute(self, sql: str, params: tuple) -> int:
        async with self.pool.connection() as conn:
            cur = await conn.execute(_pg(sql), params)
            return cur.rowcount

    async def _fetchall(self, sql: str, params: tuple) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(_pg(sql), params)
            return list(await cur.fetchall())

    async def execute_serialised(self, sql: str, params: tuple = ()) -> int:
        async with self.guarded(), self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(7710337002)")
            cur = await conn.execute(_pg(sql), params)
            return cur.rowcount

    async def setup(self) -> None:
        async with self.guarded(), self.pool.connection() as conn, conn.transaction():
            # one process at a time: concurrent CREATE OR REPLACE FUNCTION calls conflict
            await conn.execute("SELECT pg_advisory_xact_lock(7710337001)")
            for statement in SCHEMA + PG_SCHEMA:
                await conn.execute(statement)

    async def grant(self, thread_id: str) -> Lease:
        return await self.grant_checked(thread_id, None)

    async def grant_checked(self, thread_id: str, check: SessionCheck | None) -> Lease:
        """One statement: with ``check``, the session's read and access stamp are CTEs, and the lease row comes from
        the live session (none if it is gone)."""
        now, source, params, live = self.now_sql, "", (), ()
        if check is not None:
            wall = time.time()
            live = (check.session_id, check.principal, wall - check.ttl)
            source = (
                f"WITH live AS (SELECT 1 FROM redraft_sessions WHERE {_LIVE}), "
                f"touched AS (UPDATE redraft_sessions SET last_accessed = ? WHERE {_LIVE} AND last_accessed < ?) "
            )
            params = (*live, wall, *live, wall - check.touch_every)
        row = await self.fetchone(
            source + "INSERT INTO redraft_leases (thread_id, owner, token, expires_at) "
            f"SELECT ?, ?, nextval('redraft_fence'), {now} + ? {'FROM live ' if check is not None else ''}"
            "ON CONFLICT (thread_id) DO UPDATE SET owner = excluded.owner, token = excluded.token, "
            f"expires_at = excluded.expires_at WHERE redraft_leases.expires_at < {now} "
            # xmax is 0 on a freshly inserted row, non-zero on one updated: an expired lease taken over
            "RETURNING token, xmax::text <> '0' AS took_over",
            (*params, thread_id, OWNER, self.lease_ttl),
        )
        if row is None:
            why = await self.fetchone(
                "SELECT (SELECT owner FROM redraft_leases WHERE thread_id = ?) AS owner"
                + (f", EXISTS (SELECT 1 FROM redraft_sessions WHERE {_LIVE}) AS live" if check is not None else ""),
                (thread_id, *live),
            )
            if check is not None and not why["live"]:
                raise SessionNotFoundError()
            raise lease_refused(why["owner"])
        if row["took_over"]:
            metrics.lease_taken_over()
        return Lease(thread_id, int(row["token"]))

    async def retire(self, thread_ids: Iterable[str]) -> None:
        ids = list(thread_ids)
        now = self.now_sql
        async with self.guarded(), self.pool.connection() as conn, conn.transaction():
            for thread_id in ids:
                cur = await conn.execute(
                    _pg(
                        "INSERT INTO redraft_leases (thread_id, owner, token, expires_at) "
                        f"VALUES (?, ?, nextval('redraft_fence'), {now} + ?) "
                        "ON CONFLICT (thread_id) DO UPDATE SET owner = excluded.owner, token = excluded.token, "
                        f"expires_at = excluded.expires_at WHERE redraft_leases.expires_at < {now} "
                        f"OR redraft_leases.owner = '{TOMBSTONE}'"
                    ),
                    (thread_id, TOMBSTONE, TOMBSTONE_SECONDS),
                )
                if cur.rowcount != 1:  # the transaction rolls back: no tombstone was left anywhere
                    raise SessionBusyError("A step is running in this session; retry when it has finished.")


def is_driver_error(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] in DRIVER_MODULES


def storage_error(exc: BaseException) -> StorageError:
    """Wrap a driver error without leaking connection strings (and count it: ``redraft_storage_errors_total``)."""
    metrics.storage_failed()
    return StorageError(f"Database error ({type(exc).__name__}); the operation was not applied and can be retried.")
