"""Beyond one machine: redraft replica processes on one PostgreSQL, directly and through PgBouncer.

Each replica is a bench.worker process running ``Runner.refine`` (what a ``redraft serve`` replica runs per refine
call) on its own pool. The database's own counters (pg_stat_database, WAL position) give what one step costs the
database: transactions and WAL bytes per step, and the share of one core the server's backends used. PgBouncer (if
installed: ``apt-get install pgbouncer``) runs in transaction mode in front of the same database: redraft keeps no
session state on a connection. PgBouncer before 1.21 needs ``REDRAFT_DB_PREPARED_STATEMENTS=false``, and
``ignore_startup_parameters = options`` (redraft sends the server-side statement_timeout as a startup option;
behind PgBouncer set it on the database role instead: the client-side deadline still applies).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from bench.concurrency import Workers
from tests.servers import free_port

SESSIONS, LOOPS, LATENCY = 200, 2, 0.1


def _server_counters(url: str) -> dict:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        row = conn.execute(
            "SELECT xact_commit, pg_current_wal_lsn() - '0/0'::pg_lsn AS wal "
            "FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return {"xacts": row[0], "wal": int(row[1])}


def _backend_cpu() -> float:
    """CPU seconds used so far by every PostgreSQL process on this machine (from /proc)."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)
            with open(f"/proc/{pid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        if name.startswith("postgres"):
            parts = fields[1].split()
            total += int(parts[11]) + int(parts[12])
    return total / tick


@contextlib.contextmanager
def pgbouncer(url: str):
    """PgBouncer in transaction mode in front of ``url``'s database (as the postgres user); yields its URL, or None
    when PgBouncer is not installed."""
    binary = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)
    if binary is None:
        yield None
        return
    rest = url.split("://", 1)[1]
    hostport, dbname = rest.split("@", 1)[1].split("/", 1)
    host, _, port = hostport.partition(":")
    listen = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o777)
        ini = Path(tmp) / "pgbouncer.ini"
        ini.write_text(
            f"[databases]\n{dbname} = host={host} port={port or 5432} dbname={dbname}\n"
            f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {listen}\nauth_type = trust\n"
            f"auth_file = {tmp}/users.txt\npool_mode = transaction\ndefault_pool_size = 20\nmax_client_conn = 1000\n"
            f"ignore_startup_parameters = extra_float_digits,options\n"
            f"unix_socket_dir = {tmp}\nlogfile = {tmp}/pgbouncer.log\npidfile = {tmp}/pgbouncer.pid\n"
        )
        (Path(tmp) / "users.txt").write_text('"postgres" ""\n')
        cmd = [binary, str(ini)]
        if os.geteuid() == 0:  # PgBouncer refuses to run as root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        bouncer = f"postgresql://postgres@127.0.0.1:{listen}/{dbname}"
        try:
            for _ in range(100):
                try:
                    psycopg.connect(bouncer, connect_timeout=1).close()
                    break
                except psycopg.Error:
                    time.sleep(0.05)
            yield bouncer
        finally:
            proc.terminate()
            proc.wait(10)


async def _row(label: str, url: str, stats_url: str, processes: int, **env: str) -> list:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the worker processes read their REDRAFT_* settings from the environment
    try:
        workers = await Workers("redraft", url, processes).__aenter__()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_exit(workers.__aexit__)
        before, cpu0 = await asyncio.to_thread(_server_counters, stats_url), _backend_cpu()
        t0 = time.perf_counter()
        result = await workers.run(SESSIONS, LOOPS, LATENCY, stagger=True)
        wall = time.perf_counter() - t0
        after, cpu1 = await asyncio.to_thread(_server_counters, stats_url), _backend_cpu()
    steps = SESSIONS * (1 + 2 * LOOPS)
    return [
        label,
        processes,
        f"{result['steps_per_s']:.0f}",
        f"{result['fraction']:.0%}",
        f"{result['cpu']:.0%}",
        f"{(cpu1 - cpu0) / wall:.0%}",
        f"{(after['xacts'] - before['xacts']) / steps:.1f}",
        f"{(after['wal'] - before['wal']) / steps / 1024:.1f}",
        result["errors"],
    ]


async def replicas(pg: str) -> dict:
    rows = [await _row("direct", pg, pg, 1), await _row("direct", pg, pg, 4, REDRAFT_BENCH_POOL_MAX_SIZE="15")]
    with pgbouncer(pg) as bouncer:
        if bouncer is not None:
            rows.append(
                await _row(
                    "PgBouncer (transaction mode)",
                    bouncer,
                    pg,
                    4,
                    REDRAFT_DB_PREPARED_STATEMENTS="false",
                    REDRAFT_BENCH_POOL_MAX_SIZE="40",
                )
            )
        else:
            rows.append(["PgBouncer: not installed", "-", "-", "-", "-", "-", "-", "-", "-"])
    return {
        "title": "Beyond one machine: replica processes on one PostgreSQL",
        "what": f"{SESSIONS} sessions each refine {LOOPS} loops ({1 + 2 * LOOPS} durable steps) at "
        f"{LATENCY * 1000:.0f} ms model latency, split over N redraft worker processes (each what a "
        "`redraft serve` replica runs per refine call, its own pool) on one database. 'replica CPU' sums the "
        "worker processes; 'database CPU' is every PostgreSQL process on the machine (1 core = 100%); "
        "transactions and WAL per durable step come from the server's own counters. On this 2-core machine "
        "replicas, database and the rest share the same cores, so more processes add scheduling, not capacity: "
        "the per-step database cost is the figure that scales.",
        "headers": [
            "path",
            "processes",
            "steps/s",
            "share of ideal",
            "replica CPU",
            "database CPU",
            "transactions / step",
            "WAL KB / step",
            "failed runs",
        ],
        "rows": rows,
        "target": "(sizing: see 'Beyond one machine' below)",
        "verdict": "measured",
    }
