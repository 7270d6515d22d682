"""Readiness checks for ``/readyz``: the database answers, its schema is migrated, Redis answers (when
``REDRAFT_REDIS_URL`` is set), and the process is not draining. Each check is timed and bounded by
``REDRAFT_HEALTH_TIMEOUT_SECONDS``; the checks run concurrently, so a probe answers within that bound even when
everything is down. Probes share one round of checks per second (``Readiness.FRESH_FOR``).

PostgreSQL is checked over a connection of the probe's own, never the pool's: under load every pooled connection
may be busy, and a probe must neither wait for one nor take one from a request. The connection is opened on first
use and again after a failure. A result says ``ok`` and, on failure, a short ``error`` (an exception's type name or
``timeout``): never a URL, a host or a message from the driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

# redraft's own tables (graph/database.py SCHEMA), and the checkpoint tables of each backend
REDRAFT_TABLES = ("redraft_sessions", "redraft_stats", "redraft_leases", "redraft_runs")
SQLITE_CHECKPOINT_TABLES = ("checkpoints", "writes")


class Check:
    """One timed check's result."""

    def __init__(self) -> None:
        self.ok = False
        self.error: str | None = None
        self.detail: dict[str, Any] = {}
        self.started = time.perf_counter()
        self.duration_ms = 0.0
        self.finished = False

    def done(self, ok: bool, error: str | None = None, **detail: Any) -> Check:
        self.ok, self.error, self.detail, self.finished = ok, error, detail, True
        self.duration_ms = round((time.perf_counter() - self.started) * 1000, 3)
        return self

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "duration_ms": self.duration_ms, **self.detail}
        if self.error:
            out["error"] = self.error
        return out


def _failure(exc: BaseException) -> str:
    return "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__


class PostgresProbe:
    """``SELECT 1`` and the schema check over one dedicated autocommit connection."""

    def __init__(self, url: str, expected_migration: int, timeout: float) -> None:
        self.url = url
        self.expected_migration = expected_migration
        self.timeout = timeout
        self.conn: Any = None
        self.lock = asyncio.Lock()

    async def _connection(self):
        import psycopg

        if self.conn is None or self.conn.closed:
            self.conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True, connect_timeout=2)
        return self.conn

    async def check(self) -> tuple[Check, Check]:
        database, migrations = Check(), Check()
        try:
            async with asyncio.timeout(self.timeout), self.lock:
                conn = await self._connection()
                await (await conn.execute("SELECT 1")).fetchone()
                database.done(True)
                migrations.started = time.perf_counter()
                cur = await conn.execute(
                    "SELECT to_regclass('checkpoint_migrations') IS NOT NULL, "
                    + " AND ".join(f"to_regclass('{name}') IS NOT NULL" for name in REDRAFT_TABLES)
                )
                row = await cur.fetchone()
                version = None
                if row[0]:
                    version = (await (await conn.execute("SELECT max(v) FROM checkpoint_migrations")).fetchone())[0]
                current = version is not None and version >= self.expected_migration and bool(row[1])
                migrations.done(
                    current,
                    None if current else "not_applied",
                    version=version,
                    expected=self.expected_migration,
                )
        except asyncio.CancelledError:
            await self.reset()
            raise
        except Exception as exc:
            await self.reset()
            for check in (database, migrations):
                if not check.finished:
                    check.done(False, _failure(exc) if check is database or database.ok else "database_unreachable")
        return database, migrations

    async def reset(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 0.5)

    async def close(self) -> None:
        await self.reset()


class SqliteProbe:
    """A statement on the backend's own connection (an embedded file: there is no pool to wait on)."""

    def __init__(self, db: Any, timeout: float, memory: bool = False) -> None:
        self.db = db
        self.timeout = timeout
        self.memory = memory

    async def check(self) -> tuple[Check, Check]:
        database, migrations = Check(), Check()
        try:
            async with asyncio.timeout(self.timeout):
                rows = await self.db.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
                database.done(True)
                migrations.started = time.perf_counter()
                names = {row["name"] for row in rows}
                wanted = REDRAFT_TABLES + (() if self.memory else SQLITE_CHECKPOINT_TABLES)
                missing = [name for name in wanted if name not in names]
                migrations.done(not missing, "not_applied" if missing else None)
        except Exception as exc:
            for check in (database, migrations):
                if not check.finished:
                    check.done(False, _failure(exc) if check is database or database.ok else "database_unreachable")
        return database, migrations

    async def close(self) -> None:
        pass


class RedisProbe:
    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self.client: Any = None

    async def check(self) -> Check:
        check = Check()
        try:
            async with asyncio.timeout(self.timeout):
                if self.client is None:
                    import redis.asyncio as redis

                    self.client = redis.Redis.from_url(
                        self.url, socket_connect_timeout=self.timeout, socket_timeout=self.timeout
                    )
                await self.client.ping()
            return check.done(True)
        except Exception as exc:
            return check.done(False, _failure(exc))

    async def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.aclose()


class Readiness:
    """All of ``/readyz``'s checks. ``draining`` says whether the process is shutting down (no new work); it is read
    on every probe. The I/O checks are shared: probes that arrive while a round of checks is in flight, or within
    ``FRESH_FOR`` seconds of the last one, get its results (``age_ms`` says how old), so a storm of probes costs one
    round trip per ``FRESH_FOR`` and never queues on the database."""

    FRESH_FOR = 1.0

    def __init__(self, database: Any, redis: RedisProbe | None, draining: Callable[[], bool]) -> None:
        self.database = database
        self.redis = redis
        self.draining = draining
        self._last: tuple[float, dict[str, Check]] | None = None
        self._inflight: asyncio.Future | None = None

    async def _io_checks(self) -> dict[str, Check]:
        jobs: list[Awaitable[Any]] = [self.database.check()]
        if self.redis is not None:
            jobs.append(self.redis.check())
        results = await asyncio.gather(*jobs)
        database, migrations = results[0]
        checks = {"database": database, "migrations": migrations}
        if self.redis is not None:
            checks["redis"] = results[1]
        self._last = (time.monotonic(), checks)
        return checks

    async def _shared_checks(self) -> tuple[float, dict[str, Check]]:
        if self._last is not None and time.monotonic() - self._last[0] < self.FRESH_FOR:
            return self._last
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self._io_checks())
        await asyncio.shield(self._inflight)  # a probe that gives up does not cancel the others' round
        return self._last

    async def check(self) -> tuple[bool, dict[str, Any]]:
        started = time.perf_counter()
        draining = Check().done(not self.draining())
        checked_at, io_checks = await self._shared_checks()
        checks = {**io_checks, "not_draining": draining}
        ready = all(check.ok for check in checks.values())
        body = {
            "status": "ready" if ready else "not_ready",
            "checks": {name: check.as_dict() for name, check in checks.items()},
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "age_ms": round((time.monotonic() - checked_at) * 1000, 3),
        }
        return ready, body

    async def close(self) -> None:
        if self._inflight is not None and not self._inflight.done():
            self._inflight.cancel()
            with contextlib.suppress(BaseException):
                await self._inflight
        await self.database.close()
        if self.redis is not None:
            await self.redis.close()


def build_readiness(persistence: Any, settings: Any, draining: Callable[[], bool]) -> Readiness:
    """The checks for a backend opened by ``graph.checkpointer.open_persistence``."""
    timeout = settings.health_timeout_seconds
    if persistence.kind == "postgres":
        migrations = getattr(persistence.saver, "MIGRATIONS", None) or [None]
        database: Any = PostgresProbe(settings.database_url, len(migrations) - 1, timeout)
    else:
        database = SqliteProbe(persistence.db, timeout, memory=persistence.kind == "memory")
    redis_url = settings.redis_url
    redis = RedisProbe(redis_url, timeout) if redis_url and not redis_url.startswith("memory") else None
    return Readiness(database, redis, draining)
