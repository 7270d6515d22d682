"""The embedded backends of redraft's small tables: SQLite (a file, the default) and ``memory`` (this process only).

The shared contract, the schema and the PostgreSQL backend are in ``graph/database.py``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from redraft.errors import ConflictError, SessionBusyError, SessionNotFoundError
from redraft.graph.database import OWNER, SQLITE_SCHEMA, TOMBSTONE, TOMBSTONE_SECONDS, Database, Lease, lease_refused
from redraft.graph.fencing import RollbackLock


class SqliteDatabase(Database):
    kind = "sqlite"

    def __init__(self, conn) -> None:
        self.conn = conn
        # rows carry their column names, so a read is one trip to the connection's thread (execute_fetchall), not
        # three (execute, fetch, close the cursor); they still index by position
        conn.row_factory = sqlite3.Row
        # the connection is shared by every coroutine of the process: a transaction must not interleave with them;
        # whatever its holder leaves open (a transaction cut off by a cancellation) is rolled back before release
        self.lock = RollbackLock(conn)

    async def _execute(self, sql: str, params: tuple) -> int:
        # the connection is in autocommit mode (isolation_level=None): each statement commits on its own
        async with self.lock:
            cur = await self.conn.execute(sql, params)
            return cur.rowcount

    async def _fetchall(self, sql: str, params: tuple) -> list[dict[str, Any]]:
        async with self.lock:
            return [dict(row) for row in await self.conn.execute_fetchall(sql, params)]

    async def setup(self) -> None:
        await super().setup()
        columns = {row["name"] for row in await self.fetchall("PRAGMA table_info(redraft_leases)")}
        if "token" not in columns:
            await self.execute("ALTER TABLE redraft_leases ADD COLUMN token INTEGER NOT NULL DEFAULT 0")
        if "model" not in {row["name"] for row in await self.fetchall("PRAGMA table_info(redraft_stats)")}:
            await self.execute("ALTER TABLE redraft_stats ADD COLUMN model TEXT")
        for statement in SQLITE_SCHEMA:
            await self.execute(statement)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        # a failure or cancellation anywhere in here (even while BEGIN is queued: it still runs) is rolled back by
        # the lock's exit, before anything else runs on the connection
        async with self.guarded(), self.lock:
            await self.conn.execute("BEGIN IMMEDIATE")
            yield self.conn
            await self.conn.execute("COMMIT")

    async def _take(self, conn, thread_id: str, owner: str, ttl: float, over_tombstone: bool) -> int | None:
        """Take the lease if it is free, in one statement (atomic: SQLite runs one writer at a time, and the triggers
        advance the token counter in the same statement); the new token, or None."""
        now = time.time()
        rows = await conn.execute_fetchall(  # one trip to the connection's thread
            "INSERT INTO redraft_leases (thread_id, owner, token, expires_at) "
            "VALUES (?, ?, (SELECT value + 1 FROM redraft_fence WHERE id = 1), ?) "
            "ON CONFLICT (thread_id) DO UPDATE SET owner = excluded.owner, token = excluded.token, "
            "expires_at = excluded.expires_at WHERE redraft_leases.expires_at < ? OR (? AND redraft_leases.owner = ?) "
            "RETURNING token",
            (thread_id, owner, now + ttl, now, over_tombstone, TOMBSTONE),
        )
        return int(rows[0][0]) if rows else None

    async def grant(self, thread_id: str) -> Lease:
        async with self.guarded(), self.lock:  # one autocommit statement, no transaction round trips
            token = await self._take(self.conn, thread_id, OWNER, self.lease_ttl, False)
            if token is None:
                async with self.conn.execute(
                    "SELECT owner FROM redraft_leases WHERE thread_id = ?", (thread_id,)
                ) as cur:
                    held = await cur.fetchone()
        if token is None:
            raise lease_refused(held and held[0])
        return Lease(thread_id, token)

    async def retire(self, thread_ids: Iterable[str]) -> None:
        async with self.transaction() as conn:
            for thread_id in thread_ids:
                if await self._take(conn, thread_id, TOMBSTONE, TOMBSTONE_SECONDS, True) is None:
                    raise SessionBusyError("A step is running in this session; retry when it has finished.")


class MemoryDatabase(SqliteDatabase):
    """The ``memory`` backend: checkpoints live in this process's memory, so only this process can ever step a
    thread, and an in-process lease is exact (and needs no fence). It costs no database round trip per run."""

    kind = "memory"

    def __init__(self, conn) -> None:
        super().__init__(conn)
        self.running: dict[str, int] = {}
        self.retired: set[str] = set()
        self.tokens = 0

    async def grant(self, thread_id: str) -> Lease:
        if thread_id in self.retired:
            raise SessionNotFoundError()
        if thread_id in self.running:  # test-and-set with no await in between: atomic on the event loop
            raise ConflictError("Another step is running on this thread; retry when it has finished.")
        self.tokens += 1
        self.running[thread_id] = self.tokens
        return Lease(thread_id, self.tokens)

    async def renew(self, lease: Lease) -> bool:
        return self.running.get(lease.thread_id) == lease.token

    async def release(self, lease: Lease) -> None:
        if self.running.get(lease.thread_id) == lease.token:
            del self.running[lease.thread_id]

    async def retire(self, thread_ids: Iterable[str]) -> None:
        ids = list(thread_ids)
        if any(t in self.running for t in ids):
            raise SessionBusyError("A step is running in this session; retry when it has finished.")
        self.retired.update(ids)

    async def unretire(self, thread_ids: Iterable[str]) -> None:
        self.retired.difference_update(thread_ids)

    async def forget_tombstones(self) -> int:
        return 0
