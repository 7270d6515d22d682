"""Checkpointer factory: one URL setting picks the backend.

* ``postgresql://...``  -> ``AsyncPostgresSaver`` on a psycopg pool (autocommit, dict_row, statements prepared on
  first use unless ``REDRAFT_DB_PREPARED_STATEMENTS=false``, for PgBouncer in transaction mode)
* a file path or ``sqlite:///path`` -> ``AsyncSqliteSaver`` (the embedded default, in the user's data dir)
* ``memory``            -> ``InMemorySaver`` (quick dev, one process; redraft's own tables go to an in-memory SQLite,
  step leases stay in the process)

All use ``SafeSerializer`` (JSON first, never pickle). ``setup()`` runs once per process at open.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import select
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import langgraph.pregel._checkpoint as _pregel_checkpoint
from langgraph.checkpoint.base import BaseCheckpointSaver

from redraft.errors import ConfigError, RedraftError, StorageError
from redraft.graph.database import Database, PostgresDatabase, storage_error
from redraft.graph.fencing import RollbackLock, fenced_sqlite_commit
from redraft.graph.pgsaver import FencedPostgres
from redraft.graph.serde import SafeSerializer
from redraft.graph.sqlitedb import MemoryDatabase, SqliteDatabase
from redraft.graph.state import SNAPSHOT_EVERY
from redraft.settings import Settings

# Every delta channel also writes a full snapshot after this many supersteps without one, however rarely it is
# updated. Reading a thread walks back from its head to each channel's last snapshot, one checkpoint row per
# superstep: a log written once per query (outcomes, history) would otherwise be walked back to the thread's start on
# every read (LangGraph's default bound is 5,000 supersteps; at 1,000 checkpoints a head read cost 16x its cost at
# 26). The same cadence as the logs written every step (SNAPSHOT_EVERY). Module-level in LangGraph (env
# LANGGRAPH_DELTA_MAX_SUPERSTEPS_SINCE_SNAPSHOT, read once at its import), so it is set here.
SNAPSHOT_SUPERSTEPS = SNAPSHOT_EVERY
_pregel_checkpoint.DELTA_MAX_SUPERSTEPS_SINCE_SNAPSHOT = min(
    _pregel_checkpoint.DELTA_MAX_SUPERSTEPS_SINCE_SNAPSHOT, SNAPSHOT_SUPERSTEPS
)


class CompactVersions:
    """Channel versions as ``0000000042.9f3a2b1c`` (19 chars) instead of the stock 51-char form.

    Every checkpoint row repeats a version per channel and per node, so this trims ~0.5 KB off each checkpoint.
    Still fixed-width (string order == numeric order) and still random-suffixed, so two branches forked from one
    checkpoint never share a blob key.
    """

    def get_next_version(self, current, channel=None) -> str:
        current_v = 0 if current is None else int(current) if isinstance(current, int) else int(current.split(".")[0])
        return f"{current_v + 1:010d}.{random.getrandbits(32):08x}"


@dataclass
class Persistence:
    saver: BaseCheckpointSaver
    db: Database
    kind: str  # "postgres" | "sqlite" | "memory"


def backend_of(url: str) -> tuple[str, str]:
    """(kind, target) for a database URL setting."""
    url = url.strip()
    if url == "memory" or url == ":memory:":
        return "memory", ":memory:"
    lower = url.lower()
    if lower.startswith(("postgresql://", "postgres://")):
        return "postgres", url
    if lower.startswith("sqlite://"):
        path = url.split("://", 1)[1]
        path = path[1:] if path.startswith("/") else path  # sqlite:///rel/x -> rel/x; sqlite:////abs/x -> /abs/x
        return "sqlite", path if path else ":memory:"
    if "://" in url:
        raise ConfigError(f"Unsupported database URL scheme in {url.split('://', 1)[0]!r}.")
    return "sqlite", url


@contextlib.asynccontextmanager
async def open_persistence(settings: Settings) -> AsyncIterator[Persistence]:
    kind, target = backend_of(settings.database_url)
    serde = SafeSerializer()
    try:
        if kind == "postgres":
            cm = _open_postgres(target, settings, serde)
        else:
            cm = _open_sqlite(kind, target, serde)
        async with cm as persistence:
            persistence.db.lease_ttl = settings.lease_ttl_seconds
            persistence.db.statement_timeout = settings.db_statement_timeout
            yield persistence
    except RedraftError:
        raise
    except ImportError as exc:
        raise ConfigError(f"Cannot open the {kind} database: {exc}") from None
    except OSError as exc:  # configured, but the file or directory cannot be opened: storage unavailable
        raise StorageError(f"Cannot open the {kind} database: {exc}") from None
    except Exception as exc:
        if type(exc).__module__.startswith(("psycopg", "sqlite3", "aiosqlite")):
            raise storage_error(exc) from None
        raise


class LivenessCheck:
    """The pool's check on checkout, without a round trip for a connection that is plainly alive.

    psycopg's ``check_connection`` costs a round trip per checkout: ~11% of the CPU of a busy process, since every
    query checks a connection out. A pooled connection is idle, so the server has nothing to say to it; when its
    backend is terminated (restart, ``pg_terminate_backend``, failover) the server sends a notice and closes the
    socket, which makes the socket readable. So: a closed or readable socket, or one idle longer than
    ``idle_for`` (a silently dropped TCP connection sends nothing), gets the full check and is replaced if dead;
    any other connection is handed out as it is.
    """

    def __init__(self, check: Callable[[Any], Awaitable[None]], idle_for: float = 30.0) -> None:
        self._check = check
        self.idle_for = idle_for
        self._returned: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    async def returned(self, conn: Any) -> None:
        _refuse_pipelined(conn)
        self._returned[conn] = time.monotonic()

    async def check(self, conn: Any) -> None:
        _refuse_pipelined(conn)
        last = self._returned.get(conn)
        if last is not None and time.monotonic() - last < self.idle_for and not conn.closed:
            if not _readable(conn.fileno()):
                return
        await self._check(conn)


def _refuse_pipelined(conn: Any) -> None:
    """A connection still in pipeline mode (a step cancelled while its pipelined write was ending: psycopg does not
    leave pipeline mode on a cancelled exit) must not serve anyone again: the next caller's statements would queue
    unsynced and report no row count, so a committed insert could look failed, or an insert be lost. Raising here
    makes the pool discard it."""
    if conn._pipeline is not None or (not conn.closed and conn.pgconn.pipeline_status != 0):
        raise RuntimeError("connection returned in pipeline mode")


def _readable(fd: int) -> bool:
    """Whether a socket has something to read, without waiting. poll() where it exists: select() cannot take a
    descriptor numbered 1024 or more, which a busy server reaches."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])


def _quick_reconnect_pool(base: type) -> type:
    """The pool, retrying a failed connection attempt after 0.1 s and then at most every second. psycopg_pool's own
    backoff starts at 1 s and doubles for up to five minutes, while a pool that is already growing starts no other
    attempt: after an outage of a few seconds, requests would wait out that backoff although the database is back."""
    from psycopg_pool import PoolTimeout
    from psycopg_pool.base import AttemptWithBackoff

    class QuickRetry(AttemptWithBackoff):
        INITIAL_DELAY = 0.1

        def update_delay(self, now: float) -> None:
            super().update_delay(now)
            self.delay = min(self.delay, 1.0)

    class RedraftPool(base):
        async def _add_connection(self, attempt, growing: bool = False) -> None:
            await super()._add_connection(attempt or QuickRetry(timeout=self.reconnect_timeout), growing)

        async def _getconn_with_check_loop(self, deadline: float):
            """psycopg_pool waits 1 s, 2 s, 4 s ... between failed checks, though each retry takes another pooled
            connection: after every backend was terminated, a pool of dead idle connections outlasts any pool
            timeout. Here a failed check is followed by the next connection at once; only once more connections
            failed than the pool holds is there a short pause (the database itself may be down)."""
            failed = 0
            while True:
                conn = await self._getconn_unchecked(deadline - time.monotonic())
                try:
                    await self._check_connection(conn)
                except Exception:
                    await self._putconn(conn, from_getconn=True)
                except BaseException:
                    await self._putconn(conn, from_getconn=True)
                    raise
                else:
                    return conn
                failed += 1
                if time.monotonic() >= deadline:
                    raise PoolTimeout()
                if failed > self.max_size:
                    await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    return RedraftPool


@contextlib.asynccontextmanager
async def _open_postgres(url: str, settings: Settings, serde) -> AsyncIterator[Persistence]:
    import psycopg
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    try:  # one direct attempt first: fail fast and quietly instead of letting the pool retry in the background
        probe = await psycopg.AsyncConnection.connect(url, connect_timeout=max(1, round(settings.db_connect_timeout)))
        await probe.close()
    except psycopg.Error as exc:
        reason = str(exc).splitlines()[0].split(": ")[-1].strip() if str(exc) else type(exc).__name__
        raise StorageError(f"Cannot connect to PostgreSQL ({reason}). Check REDRAFT_DATABASE_URL.") from None
    liveness = LivenessCheck(AsyncConnectionPool.check_connection)
    pool = _quick_reconnect_pool(AsyncConnectionPool)(
        url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        kwargs={
            "autocommit": True,
            "row_factory": dict_row,
            "prepare_threshold": 0 if settings.db_prepared_statements else None,
            "connect_timeout": max(1, round(settings.db_connect_timeout)),
            # the server gives up on a statement too, and TCP gives up on a peer that stopped acknowledging
            "options": f"-c statement_timeout={round(settings.db_statement_timeout * 1000)}",
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": round(settings.db_statement_timeout * 1000),
        },
        timeout=settings.db_pool_timeout,
        check=liveness.check,
        reset=liveness.returned,
        open=False,
    )
    try:
        await pool.open(wait=True, timeout=settings.db_connect_timeout + settings.db_pool_timeout)
    except Exception as exc:
        await pool.close()
        reason = type(exc).__name__
        raise StorageError(f"Cannot connect to PostgreSQL ({reason}). Check REDRAFT_DATABASE_URL.") from None
    try:
        saver_type = type("RedraftPostgresSaver", (FencedPostgres, CompactVersions, AsyncPostgresSaver), {})
        saver = saver_type(pool, serde=serde)
        saver.statement_timeout = settings.db_statement_timeout
        saver.heads.max_items = saver.seeds.max_items = settings.head_cache_items
        saver.compact = settings.db_compact_layout
        await saver.setup()
        db = PostgresDatabase(pool)
        db.statement_timeout = settings.db_statement_timeout
        await db.setup()
        yield Persistence(saver=saver, db=db, kind="postgres")
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def _open_sqlite(kind: str, path: str, serde) -> AsyncIterator[Persistence]:
    import aiosqlite
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    if path != ":memory:":
        path = await asyncio.to_thread(_prepare_file, path)
    # redraft's own tables get their own connection: sharing the saver's would let our commits interleave with (and
    # commit half of) the saver's multi-statement writes. WAL mode lets the two connections work side by side.
    async with contextlib.AsyncExitStack() as stack:
        # autocommit: every statement redraft sends is a single statement, so this saves a commit round trip to
        # aiosqlite's thread per write
        own = await aiosqlite.connect(path, timeout=30, isolation_level=None)
        stack.push_async_callback(own.close)
        await own.execute("PRAGMA busy_timeout=30000")
        # sessions, stats and leases: WAL + NORMAL survives a process crash; the checkpoints keep full sync
        await own.execute("PRAGMA journal_mode=WAL")
        await own.execute("PRAGMA synchronous=NORMAL")
        if kind == "memory":
            saver: BaseCheckpointSaver = type("RedraftMemorySaver", (CompactVersions, InMemorySaver), {})(serde=serde)
        else:
            conn = await aiosqlite.connect(path, timeout=30)
            stack.push_async_callback(conn.close)
            await conn.execute("PRAGMA busy_timeout=30000")
            fenced_sqlite_commit(conn)
            saver = type("RedraftSqliteSaver", (CompactVersions, AsyncSqliteSaver), {})(conn, serde=serde)
            saver.lock = RollbackLock(conn)  # a write cut off before its commit leaves no transaction open
            await saver.setup()
        db = MemoryDatabase(own) if kind == "memory" else SqliteDatabase(own)
        await db.setup()
        yield Persistence(saver=saver, db=db, kind=kind)


def _prepare_file(path: str) -> str:
    """Expand ``~`` and create the parent directory of a SQLite file."""
    file = Path(path).expanduser()
    file.parent.mkdir(parents=True, exist_ok=True)
    return str(file)
