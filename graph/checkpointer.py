"""Checkpointer factory: one URL setting picks the backend.

* ``postgresql://...``  -> ``AsyncPostgresSaver`` on a psycopg pool (autocommit, dict_row, prepare_threshold=0)
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

from langgraph.checkpoint.base import BaseCheckpointSaver

from redraft.errors import ConfigError, RedraftError
from redraft.graph.database import Database, MemoryDatabase, PostgresDatabase, SqliteDatabase, storage_error
from redraft.graph.serde import SafeSerializer
from redraft.settings import Settings


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
            yield persistence
    except RedraftError:
        raise
    except (OSError, ImportError) as exc:
        raise ConfigError(f"Cannot open the {kind} database: {exc}") from None
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
        self._returned[conn] = time.monotonic()

    async def check(self, conn: Any) -> None:
        last = self._returned.get(conn)
        if last is not None and time.monotonic() - last < self.idle_for and not conn.closed:
            if not _readable(conn.fileno()):
                return
        await self._check(conn)


def _readable(fd: int) -> bool:
    """Whether a socket has something to read, without waiting. poll() where it exists: select() cannot take a
    descriptor numbered 1024 or more, which a busy server reaches."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])


@contextlib.asynccontextmanager
async def _open_postgres(url: str, settings: Settings, serde) -> AsyncIterator[Persistence]:
    import psycopg
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    try:  # one direct attempt first: fail fast and quietly instead of letting the pool retry in the background
        probe = await psycopg.AsyncConnection.connect(url, connect_timeout=min(10, int(settings.request_timeout)))
        await probe.close()
    except psycopg.Error as exc:
        reason = str(exc).splitlines()[0].split(": ")[-1].strip() if str(exc) else type(exc).__name__
        raise ConfigError(f"Cannot connect to PostgreSQL ({reason}). Check REDRAFT_DATABASE_URL.") from None
    liveness = LivenessCheck(AsyncConnectionPool.check_connection)
    pool = AsyncConnectionPool(
        url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        kwargs={"autocommit": True, "row_factory": dict_row, "prepare_threshold": 0},
        check=liveness.check,
        reset=liveness.returned,
        open=False,
    )
    try:
        await pool.open(wait=True, timeout=settings.request_timeout)
    except Exception as exc:
        await pool.close()
        raise ConfigError(f"Cannot connect to PostgreSQL ({type(exc).__name__}). Check REDRAFT_DATABASE_URL.") from None
    try:
        saver = type("RedraftPostgresSaver", (CompactVersions, AsyncPostgresSaver), {})(pool, serde=serde)
        await saver.setup()
        db = PostgresDatabase(pool)
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
            saver = type("RedraftSqliteSaver", (CompactVersions, AsyncSqliteSaver), {})(conn, serde=serde)
            await saver.setup()
        db = MemoryDatabase(own) if kind == "memory" else SqliteDatabase(own)
        await db.setup()
        yield Persistence(saver=saver, db=db, kind=kind)


def _prepare_file(path: str) -> str:
    """Expand ``~`` and create the parent directory of a SQLite file."""
    file = Path(path).expanduser()
    file.parent.mkdir(parents=True, exist_ok=True)
    return str(file)
