"""`python -m bench` (or `make bench`): every figure beside a baseline measured in the same run.

Uses an in-process fake model (zero or fixed latency), so graph and storage costs are what is measured. PostgreSQL
rows need a server (REDRAFT_BENCH_POSTGRES, default postgresql://postgres@127.0.0.1:5432/postgres); without one
they are reported as skipped. Writes docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import os
import platform
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from bench.concurrency import concurrency  # noqa: E402
from bench.sections import (  # noqa: E402
    mcp_round_trip,
    overhead,
    prompt_sizes,
    storage,
    time_travel,
)
from bench.task_latency import task_latency  # noqa: E402

ADMIN = os.environ.get("REDRAFT_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def fresh_pg() -> tuple[str | None, str | None]:
    name = f"redraft_bench_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(ADMIN, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
            version = conn.execute("SHOW server_version").fetchone()[0]
    except psycopg.Error:
        return None, None
    return ADMIN.rsplit("/", 1)[0] + f"/{name}", version


def drop_pg(url: str) -> None:
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def markdown(sections: list[dict], header: str) -> str:
    lines = ["# Benchmarks", "", header, ""]
    for s in sections:
        lines += [f"## {s['title']}", "", s["what"], ""]
        lines.append("| " + " | ".join(s["headers"]) + " |")
        lines.append("|" + "---|" * len(s["headers"]))
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in s["rows"]]
        lines += ["", f"**Target:** {s['target']}  ", f"**Result:** {s['verdict']}", ""]
    return "\n".join(lines)


def show(sections: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for s in sections:
        table = Table(*s["headers"], title=s["title"], caption=f"target: {s['target']} -- {s['verdict']}")
        for row in s["rows"]:
            table.add_row(*(str(c) for c in row))
        console.print(table)


async def main() -> None:
    started = time.perf_counter()
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"redraft-bench-{uuid.uuid4().hex[:6]}"
    tmp.mkdir(parents=True)
    pg, pg_version = fresh_pg()
    backends = {"memory": "memory", "sqlite": str(tmp / "bench.sqlite")}
    if pg:
        backends["postgres"] = pg
    try:
        sections = [
            await overhead(backends),
            await mcp_round_trip(str(tmp / "mcp.sqlite")),
            await storage(pg),
            await concurrency(backends),
            await time_travel({k: v for k, v in backends.items() if k != "memory"}),
            await prompt_sizes(),
            await task_latency(str(tmp)),
        ]
    finally:
        if pg:
            drop_pg(pg)
    header = (
        f"Run {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"PostgreSQL {pg_version or 'not available'}; took {time.perf_counter() - started:.0f} s. "
        "Model: in-process fake (see bench/fake.py). Regenerate with `make bench`."
    )
    show(sections)
    out = ROOT / "docs" / "benchmarks.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(markdown(sections, header) + "\n")
    print(f"\nwritten to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
