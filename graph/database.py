"""A thin async handle on the database that holds the checkpoints, for redraft's own small tables
(sessions, stats). SQL is written once with ``?`` placeholders; the Postgres backend rewrites them to ``%s``.

Also provides per-thread step leases that work across server processes on either backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from redraft.errors import ConflictError, StorageError

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
        detail TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS redraft_stats_companion ON redraft_stats (companion, kind)",
    """CREATE TABLE IF NOT EXISTS redraft_leases (
        thread_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    )""",
]


class Database:
    kind = "abstract"
    # Seconds a step lease lives without a heartbeat; a crashed holder blocks its thread at most this long.
    lease_ttl = 10.0

    async def execute(self, sql: str, params: tuple = ()) -> int: ...

    async def fetchall(self, sql: str, params: tuple = ()) -> list[dict[str, Any]]: ...

    async def fetchone(self, sql: str, params: tuple = ()) -> dict[str, Any] | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def setup(self) -> None:
        for statement in SCHEMA:
            await self.execute(statement)

    async def busy_sessions(self) -> set[str]:
        """Sessions with a step running: a live lease on one of their threads."""
        rows = await self.fetchall("SELECT thread_id FROM redraft_leases WHERE expires_at > ?", (time.time(),))
        return {_session_of(row["thread_id"]) for row in rows}

    @contextlib.asynccontextmanager
    async def thread_lock(self, thread_id: str) -> AsyncIterator[None]:
        """Hold a lease on a thread for the duration of one step; refuse (ConflictError) if someone else holds it.

        A lease row, renewed by a heartbeat while the step runs, works the same on Postgres and SQLite and across
        server processes without pinning a pooled connection. If the holder dies, the lease lapses after
        ``lease_ttl`` seconds.
        """
        ttl = self.lease_ttl
        owner = uuid.uuid4().hex
        now = time.time()
        acquired = await self.execute(
            "INSERT INTO redraft_leases (thread_id, owner, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT (thread_id) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at "
            "WHERE redraft_leases.expires_at < ?",
            (thread_id, owner, now + ttl, now),
        )
        if acquired != 1:
            raise ConflictError("Another step is running on this thread; retry when it has finished.")

        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(ttl / 3)
                await self.execute(
                    "UPDATE redraft_leases SET expires_at = ? WHERE thread_id = ? AND owner = ?",
                    (time.time() + ttl, thread_id, owner),
                )

        beat = asyncio.create_task(heartbeat())
        try:
            yield
        finally:
            beat.cancel()
            with contextlib.suppress(BaseException):
                await beat
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self.execute("DELETE FROM redraft_leases WHERE thread_id = ? AND owner = ?", (thread_id, owner))
                )


def _session_of(thread_id: str) -> str:
    """The session of a thread id ``<session>:<companion>`` (see ``runner.thread_id_for``)."""
    return thread_id.split(":", 1)[0]


def _pg(sql: str) -> str:
    """``?`` placeholders to psycopg's ``%s``; a literal ``%`` (as in LIKE patterns) must be doubled first."""
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresDatabase(Database):
    kind = "postgres"

    def __init__(self, pool) -> None:
        self.pool = pool

    async def execute(self, sql: str, params: tuple = ()) -> int:
        async with self.pool.connection() as conn:
            cur = await conn.execute(_pg(sql), params)
            return cur.rowcount

    async def fetchall(self, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(_pg(sql), params)
            return list(await cur.fetchall())


class SqliteDatabase(Database):
    kind = "sqlite"

    def __init__(self, conn) -> None:
        self.conn = conn

    async def execute(self, sql: str, params: tuple = ()) -> int:
        # the connection is in autocommit mode (isolation_level=None): each statement commits on its own
        cur = await self.conn.execute(sql, params)
        return cur.rowcount

    async def fetchall(self, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
        async with self.conn.execute(sql, params) as cur:
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in await cur.fetchall()]


class MemoryDatabase(SqliteDatabase):
    """The ``memory`` backend: checkpoints live in this process's memory, so only this process can ever step a
    thread, and an in-process lease is exact. It costs no database round trip per run."""

    kind = "memory"

    def __init__(self, conn) -> None:
        super().__init__(conn)
        self.running: set[str] = set()

    @contextlib.asynccontextmanager
    async def thread_lock(self, thread_id: str) -> AsyncIterator[None]:
        if thread_id in self.running:  # test-and-set with no await in between: atomic on the event loop
            raise ConflictError("Another step is running on this thread; retry when it has finished.")
        self.running.add(thread_id)
        try:
            yield
        finally:
            self.running.discard(thread_id)

    async def busy_sessions(self) -> set[str]:
        return {_session_of(thread_id) for thread_id in self.running}


def storage_error(exc: BaseException) -> StorageError:
    """Wrap a driver error without leaking connection strings."""
    return StorageError(f"Database error ({type(exc).__name__}); the operation was not applied and can be retried.")
