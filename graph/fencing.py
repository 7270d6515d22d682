"""Fenced checkpoint writes and bounded database calls.

A step holds a lease on its thread (``graph/leases.py``); every lease grant carries a fencing token drawn from a
database sequence, so tokens only ever grow. While a step runs, ``FENCE`` names its thread and token, and every
checkpoint write the saver makes (the checkpoint, its blobs, a task's pending writes) first checks, *in the same
transaction*, that the token is still the thread's current one:

* PostgreSQL: ``redraft_fence_check(thread, token)`` runs first in the write's transaction and takes a share lock on
  the lease row, so a replica taking the lease over waits for this commit or sees it never happened. A lost lease
  raises SQLSTATE ``RDLL1`` and the whole write rolls back.
* SQLite: the check runs on the checkpoint connection just before its commit, while the write's own statement holds
  the database's write lock, so no other process can take the lease between check and commit.

A replica that lost its lease therefore stops at its next write and commits nothing: a step is committed at most
once. While a step holds its lease, a task's pending writes are held back (``DEFERRED``) and go out with the next
checkpoint, in its statement (graph/pgsaver.py): one commit per step; what is left when the lease ends is sent then.
``deadline`` bounds any database call, so a stalled network ends in a ``StorageError`` instead of a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator
from dataclasses import dataclass

from redraft.errors import LeaseLostError, StorageError
from redraft.observability import metrics

LEASE_LOST_SQLSTATE = "RDLL1"

PG_FENCE_FUNCTION = f"""
CREATE OR REPLACE FUNCTION redraft_fence_check(t TEXT, tok BIGINT) RETURNS void AS $$
BEGIN
    PERFORM 1 FROM redraft_leases WHERE thread_id = t AND token = tok FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'redraft: the step lease on % was lost', t USING ERRCODE = '{LEASE_LOST_SQLSTATE}';
    END IF;
END $$ LANGUAGE plpgsql
"""


@dataclass(frozen=True)
class Fence:
    thread_id: str
    token: int


FENCE: contextvars.ContextVar[Fence | None] = contextvars.ContextVar("redraft_fence", default=None)


class DeferredWrites:
    """Pending writes of the steps run under one lease, not sent yet: batches of rows, and the saver that will send
    them (the first one that held a batch back). A saver that does not defer never touches it."""

    def __init__(self) -> None:
        self.batches: list = []
        self.saver = None
        # what was read under this lease: a step reads the head twice (the runner's phase check, then the graph's
        # own load). Checkpoint tuples by (thread, ns, checkpoint id or None for the head) and delta-channel
        # histories by (thread, ns, checkpoint, channels); any write under the lease clears both
        self.tuples: dict = {}
        self.histories: dict = {}

    def forget_reads(self) -> None:
        self.tuples = {}
        self.histories = {}

    async def flush(self, release: bool = False) -> bool:
        """Send what is held back. With ``release``, the same statement also gives up the running step's lease (the
        fence's), after its check: True if it did, False if there was nothing to send (release it yourself)."""
        if self.batches and self.saver is not None:
            await self.saver.send_deferred(self, release=release)
            return release
        return False


DEFERRED: contextvars.ContextVar[DeferredWrites | None] = contextvars.ContextVar("redraft_deferred", default=None)


def lease_lost(thread_id: str) -> LeaseLostError:
    session, _, companion = thread_id.partition(":")  # thread ids are "<session>:<companion>"
    where = f"session {session} ({companion})" if companion else f"thread {thread_id}"
    return LeaseLostError(
        f"This step lost its lease on {where}: the database was unreachable for longer than the lease, or another "
        "replica took the thread over. Nothing it computed was committed; call resume to continue from the last "
        "checkpoint.",
        thread_id=thread_id,
    )


def is_lease_lost(exc: BaseException) -> bool:
    return getattr(exc, "sqlstate", None) == LEASE_LOST_SQLSTATE


@contextlib.asynccontextmanager
async def deadline(seconds: float, what: str = "database call") -> AsyncIterator[None]:
    """Like ``asyncio.timeout``, but insists: a driver that catches the first cancellation to clean up (psycopg
    cancels the running query over a new connection, which a stalled network stalls too) is cancelled again after a
    short grace, which makes it drop the connection. Raises ``StorageError`` when the time runs out."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    fired = 0

    def fire() -> None:
        nonlocal fired, handle
        fired += 1
        task.cancel()
        if fired < 5:
            handle = loop.call_later(min(0.5, seconds), fire)

    handle = loop.call_later(seconds, fire)
    try:
        yield
    except asyncio.CancelledError:
        if not fired:
            raise
        handle.cancel()
        remaining = 0
        for _ in range(fired):
            remaining = task.uncancel()
        if remaining > 0:  # someone else cancelled us too: that cancellation wins
            raise
        metrics.storage_failed()
        raise StorageError(
            f"The {what} did not complete within {seconds:g} s (database unreachable or stalled); "
            "nothing was applied and it can be retried."
        ) from None
    else:
        for _ in range(fired):  # a cancellation the driver swallowed before finishing anyway
            task.uncancel()
    finally:
        handle.cancel()


def fenced_sqlite_commit(conn) -> None:
    """Make ``conn.commit()`` (the SQLite saver's connection) check the running step's fence first, inside the
    transaction the saver's write statement opened (and whose write lock it holds)."""
    commit = conn.commit

    async def checked_commit() -> None:
        fence = FENCE.get()
        if fence is not None and conn.in_transaction:
            async with conn.execute("SELECT token FROM redraft_leases WHERE thread_id = ?", (fence.thread_id,)) as cur:
                row = await cur.fetchone()
            if row is None or row[0] != fence.token:
                await conn.rollback()
                raise lease_lost(fence.thread_id)
        await commit()

    conn.commit = checked_commit


class RollbackLock(asyncio.Lock):
    """The SQLite saver's lock, which also ends a transaction its holder leaves open. A step cancelled (a cancelled
    run, a lost lease, a shutdown) between the saver's write statement and its commit would otherwise leave that
    transaction open: it holds the file's write lock, so every write on redraft's own tables waits out the busy
    timeout and fails, and the next saver write would commit the cancelled one with it, past its fence.

    The rollback is queued on the connection's thread before the lock is released, so it runs before any statement of
    the next holder (aiosqlite runs a connection's calls in order), even if this task is cancelled again meanwhile."""

    def __init__(self, conn) -> None:
        super().__init__()
        self.conn = conn

    async def __aexit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:
                with contextlib.suppress(BaseException):  # queued at the call; a second cancellation only stops waiting
                    await self.conn.rollback()  # sqlite3's rollback: a no-op with no transaction open
        finally:
            self.release()
