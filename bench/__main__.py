"""`python -m bench` (or `make bench`): every figure beside a baseline measured in the same run.

Uses an in-process fake model (zero or fixed latency), so graph and storage costs are what is measured. PostgreSQL
rows need a server (REDRAFT_BENCH_POSTGRES, default postgresql://postgres@127.0.0.1:5432/postgres); without one
they are reported as skipped. The full run writes docs/benchmarks.md; ``--quick`` (under a minute) checks the issue's
figures loosely and exits 1 when one misses its target by more than 25%.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from bench.bounds import cpu_floor  # noqa: E402
from bench.concurrency import concurrency  # noqa: E402
from bench.floor import FIGURES, figures, verdict  # noqa: E402
from bench.replicas import replicas  # noqa: E402
from bench.scoring import scoring  # noqa: E402
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
    for kept in KEPT:  # sections measured by hand, outside this run: carried over as they are
        if (ROOT / "bench" / kept).exists():
            lines += [(ROOT / "bench" / kept).read_text().strip(), ""]
    notes = ROOT / "bench" / "notes.md"  # the reading of the figures: where the time goes, what bounds them
    if notes.exists():
        lines += [NOTES_MARK, "", notes.read_text().strip(), ""]
    return "\n".join(lines)


NOTES_MARK = "<!-- the notes below come from bench/notes.md -->"
KEPT = ["cli_startup.md"]  # the CLI start-up section (issue 20): `python -m bench.cli_startup`, measured by hand


def show(sections: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))
    for s in sections:
        table = Table(*s["headers"], title=s["title"], caption=f"target: {s['target']} -- {s['verdict']}")
        for row in s["rows"]:
            table.add_row(*(str(c) for c in row))
        console.print(table)


SLACK = 0.25  # --quick: a target missed by more than this fails the run


def floor_section(figs: list[dict]) -> dict:
    rows, missed = [], []
    for f in figs:
        _, words = verdict(f)
        rows.append([f["name"], f["anchor"], f["redraft"], f["shown"], words])
        if words != "met":
            missed.append(f["name"].split(",")[0].split(":")[0])
    return {
        "title": "0. The durable step at the floor (issue 19): ratios against raw LangGraph in the same run",
        "what": "The anchor is raw LangGraph running the same three nodes (bench/baselines.py raw_loop) on LangGraph's "
        "own AsyncPostgresSaver (a psycopg pool, autocommit), on the same PostgreSQL, in the same run; redraft runs "
        "its own saver (graph/pgsaver.py) with leases and fencing. Every figure is a ratio or a difference against "
        "that anchor, so it holds across noisy machines.",
        "headers": ["figure", "anchor", "redraft", "target", "result"],
        "rows": rows,
        "target": "each row's",
        "verdict": "all met"
        if not missed
        else f"{len(figs) - len(missed)} of {len(figs)} met; not met: " + "; ".join(missed),
    }


async def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    # The in-process servers and runners below stand for `redraft serve` processes, which freeze their start-up heap
    # out of the collector (server/app.py's lifespan), as the worker processes do (bench/worker.py).
    gc.freeze()
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"redraft-bench-{uuid.uuid4().hex[:6]}"
    tmp.mkdir(parents=True)
    pg, pg_version = fresh_pg()
    if pg is None:
        print(f"PostgreSQL is not reachable at {ADMIN}: the figures need it (set REDRAFT_BENCH_POSTGRES).")
        return 2
    backends = {"memory": "memory", "sqlite": str(tmp / "bench.sqlite"), "postgres": pg}
    try:
        figs = await figures(pg, quick=args.quick or (bool(args.only) and not args.full), only=args.only)
        sections = [floor_section(figs)]
        if not args.quick and not args.only:
            sections += [
                await cpu_floor(pg),
                await replicas(pg),
                await overhead(backends),
                await mcp_round_trip(str(tmp / "mcp.sqlite")),
                await storage(pg),
                await concurrency(backends),
                await time_travel({k: v for k, v in backends.items() if k != "memory"}),
                await prompt_sizes(),
                await task_latency(str(tmp)),
                await scoring(str(tmp)),
            ]
    finally:
        drop_pg(pg)
    took = time.perf_counter() - started
    show(sections)
    if args.quick or args.only:
        for f in figs:
            print(f"{f['seconds']:5.1f} s  {f['name']}")
        failed = [f["name"] for f in figs if not verdict(f, SLACK)[0]]
        for name in failed:
            print(f"MISSED by more than {SLACK:.0%}: {name}")
        print(f"quick run: {took:.0f} s; {len(figs) - len(failed)} of {len(figs)} figures within {SLACK:.0%} of target")
        return 1 if failed else 0
    header = (
        f"Run {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"PostgreSQL {pg_version or 'not available'}; took {took:.0f} s. "
        "Model: in-process fake (see bench/fake.py). Regenerate with `make bench`."
    )
    out = ROOT / "docs" / "benchmarks.md"
    if args.write:
        out.write_text(markdown(sections, header) + "\n")
        print(f"\nwritten to {out.relative_to(ROOT)}")
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="redraft's benchmarks, each figure against a baseline measured in the same run. The full run "
        "(several minutes) prints every table and writes docs/benchmarks.md.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="only the issue's figures, lightly sampled (under a minute); exit 1 when a target is missed by more "
        f"than {SLACK * 100:.0f}%% (the target times 1.25, or 0.75 for a floor). Writes nothing.",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=FIGURES,
        help="run only this figure of section 0 (repeatable), lightly sampled unless --full; writes nothing",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="with --only: sample as the full run does (the long thread at ~1,000 checkpoints)",
    )
    parser.add_argument("--no-write", dest="write", action="store_false", help="do not write docs/benchmarks.md")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
