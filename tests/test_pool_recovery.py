"""The pool recovers by itself after a real ``pg_ctl restart`` of the database server: the first request after the
server is back succeeds, with no redraft restart, and a request while it is down is a retryable storage_error.

The test runs its own throwaway PostgreSQL cluster (initdb + pg_ctl, as the ``postgres`` user when run as root), so
restarting it disturbs no other test."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from redraft.errors import StorageError
from redraft.graph.checkpointer import open_persistence
from redraft.graph.runner import Runner
from tests.conftest import IN_CI, make_settings, new_thread
from tests.servers import free_port

pytestmark = pytest.mark.postgres


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)
    if candidates:
        return str(candidates[0])
    message = f"{name} is not installed: cannot run a throwaway PostgreSQL cluster"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


class Cluster:
    def __init__(self, root: Path) -> None:
        self.data = root / "data"
        self.port = free_port()
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def run(self, *args: str) -> None:
        subprocess.run([*self.as_postgres, *args], check=True, capture_output=True, timeout=60)

    def pg_ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.data.parent} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.data.parent / "server.log")  # the server must not hold our pipes open
        self.run(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", log, "-o", options, "-w", "-t", "30", *args)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="redraft-pg-"))  # under /tmp: pytest's own tmp dirs are private to root
    c = Cluster(root)
    if c.as_postgres:
        shutil.chown(root, "postgres")
    c.run(_pg_bin("initdb"), "-D", str(c.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    c.pg_ctl("start")
    try:
        yield c
    finally:
        subprocess.run(
            [*c.as_postgres, _pg_bin("pg_ctl"), "-D", str(c.data), "stop", "-m", "immediate"],
            capture_output=True,
            timeout=60,
        )


async def test_the_pool_recovers_after_pg_ctl_restart(cluster, stub):
    settings = make_settings(cluster.url, stub, db_statement_timeout=3, db_pool_timeout=2, db_connect_timeout=2)
    async with open_persistence(settings) as p:
        runner = Runner(p, settings)
        thread = new_thread()
        await runner.draft(thread, "generic", "Survive a restart.")
        cluster.pg_ctl("stop", "-m", "fast")
        started = time.monotonic()
        with pytest.raises(StorageError) as down:
            await runner.critique(thread)
        assert down.value.retryable and time.monotonic() - started < 3 + 3
        cluster.pg_ctl("start")
        with psycopg.connect(cluster.url, connect_timeout=5):
            pass  # the server is back
        # the first request after recovery succeeds: no redraft restart, no retry by the caller
        assert (await runner.critique(thread))["phase"] == "needs_revision"
        cluster.pg_ctl("restart", "-m", "fast")  # and a restart with no request in between
        assert (await runner.revise(thread))["phase"] == "ready_to_critique"
        assert (await p.db.fetchone("SELECT count(*) AS n FROM redraft_leases WHERE thread_id = ?", (thread,)))[
            "n"
        ] == 0
