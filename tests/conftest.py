"""Shared fixtures: a real OpenAI-compatible HTTP stub, real PostgreSQL, real SQLite.

PostgreSQL: ``REDRAFT_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``) if it answers;
otherwise pytest-postgresql starts a throwaway server from ``pg_ctl``. With ``CI=true`` a missing PostgreSQL is a
test *failure*, never a skip. Each test works in its own freshly created database.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest

from redraft.graph.checkpointer import open_persistence
from redraft.graph.runner import Runner
from redraft.settings import load_settings
from tests.stub_llm import StubLLM

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ADMIN_URL = os.environ.get("REDRAFT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def _reachable(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def pg_admin_url(request) -> str:
    if _reachable(ADMIN_URL):
        return ADMIN_URL
    try:  # a laptop without a running server: start one from pg_ctl
        proc = request.getfixturevalue("postgresql_proc")
        return f"postgresql://{proc.user}@{proc.host}:{proc.port}/postgres"
    except Exception as exc:
        message = f"PostgreSQL is not reachable at {ADMIN_URL} and could not be started ({exc})"
        if IN_CI:
            pytest.fail(message + " -- CI=true: Postgres tests must not skip.")
        pytest.skip(message)


@pytest.fixture
def pg_url(pg_admin_url) -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped at the end."""
    with fresh_database(pg_admin_url) as url:
        yield url


@pytest.fixture(scope="session")
def stub() -> StubLLM:
    s = StubLLM().start()
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def _reset_stub(request):
    if "stub" in request.fixturenames:
        request.getfixturevalue("stub").reset()


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    name = f"redraft_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path) -> Iterator[str]:
    """A fresh, empty database per test: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield str(tmp_path / "redraft.sqlite")
        return
    with fresh_database(request.getfixturevalue("pg_admin_url")) as url:
        yield url


def make_settings(db_url: str, stub: StubLLM, **extra):
    return load_settings(
        **{"database_url": db_url, "base_url": stub.base_url, "model": "stub-model", "max_retries": 0, **extra}
    )


@contextlib.asynccontextmanager
async def runner_with(db_url: str, stub: StubLLM, **extra) -> AsyncIterator[Runner]:
    """A Runner on ``db_url`` and the stub, with these settings on top of the tests' defaults."""
    settings = make_settings(db_url, stub, **extra)
    async with open_persistence(settings) as persistence:
        yield Runner(persistence, settings)


@pytest.fixture
async def runner(db_url, stub) -> AsyncIterator[Runner]:
    async with runner_with(db_url, stub) as made:
        yield made


REDIS_URL = os.environ.get("REDRAFT_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _redis_answers(url: str) -> bool:
    import redis

    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A real Redis: ``REDRAFT_TEST_REDIS`` (default 127.0.0.1:6379) if it answers, else a throwaway
    ``redis-server`` for the session. With ``CI=true`` a missing Redis fails the tests, never skips them."""
    if _redis_answers(REDIS_URL):
        yield REDIS_URL
        return
    proc = None
    if shutil.which("redis-server"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        for _ in range(100):
            if _redis_answers(url):
                break
            time.sleep(0.05)
    if proc is None or not _redis_answers(url):
        message = f"Redis is not reachable at {REDIS_URL} and redis-server could not be started"
        if proc is not None:
            proc.kill()
        if IN_CI:
            pytest.fail(message + " -- CI=true: Redis tests must not skip.")
        pytest.skip(message)
    yield url
    proc.kill()
    proc.wait(10)


@pytest.fixture
def redis_url(redis_server, monkeypatch) -> Iterator[str]:
    """The Redis URL for one test, isolated by a queue name of its own: ``FASTMCP_DOCKET_NAME`` (read by the tasks
    extension, and inherited by server subprocesses) is unique per test, and its keys are deleted afterwards."""
    import redis

    name = f"redraft-test-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("FASTMCP_DOCKET_NAME", name)
    yield redis_server
    with redis.Redis.from_url(redis_server) as client:
        keys = list(client.scan_iter(match=f"*{name}*", count=1000))
        if keys:
            client.delete(*keys)


def new_thread() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"
