"""What bounds section 0's per-step and 200-session figures: CPU per durable step, layer by layer, in this run.

At 200 sessions and 100 ms model latency both sides are CPU-bound in one Python process, so their throughputs stand
in the inverse ratio of their CPU per step. This measures that CPU (user + system, this process only; the database
server's own CPU is not counted) for the anchor's graph with no checkpointer (LangGraph's superstep and the fake
model alone), on LangGraph's in-memory saver and on the anchor's stock ``AsyncPostgresSaver``; and for redraft on
its in-memory backend and on PostgreSQL. Each run is a 10-loop refine (21 steps) with the zero-latency fake; the
cases (with the floor below) take turns, one run each, so a machine that speeds up or slows down moves them alike.

The bounds it prints: were redraft's database path free, a step would cost what redraft costs in memory, so the
200-session ratio could reach at most (the anchor on PostgreSQL) / (redraft in memory), and the per-step ratio
could not go below (redraft in memory) / (the anchor on PostgreSQL) in CPU. The per-step figure is wall time, and a
durable step needs at least one statement that commits: the floor, one INSERT of a ~3 KB row and its COMMIT on the
same PostgreSQL, timed in the same turns. So the per-step ratio cannot go below (redraft in memory + the floor) /
(the anchor on PostgreSQL) in wall time.
"""

from __future__ import annotations

import os
import statistics
import time

import psycopg
from langgraph.checkpoint.memory import InMemorySaver

from bench.baselines import raw_loop, stock_postgres
from bench.fake import FakeProvider
from bench.sections import settings_for, tid
from redraft.graph.checkpointer import open_persistence
from redraft.graph.runner import Runner

LOOPS = 10
STEPS = 1 + 2 * LOOPS
FLOOR_TABLE = "redraft_bench_floor"


async def cpu_floor(pg: str, runs: int = 30) -> dict:
    mem_settings, pg_settings = settings_for("memory"), settings_for(pg)
    provider = FakeProvider(mem_settings, changes=[30])
    model = provider.model
    cpu: dict[str, list[float]] = {}
    wall: dict[str, list[float]] = {}
    row = os.urandom(3000)  # a step's ~3 KB of writes, incompressible: the floor statement carries what a step does
    async with (
        open_persistence(mem_settings) as in_memory,
        open_persistence(pg_settings) as on_pg,
        stock_postgres(pg) as stock,
        await psycopg.AsyncConnection.connect(pg, autocommit=True) as conn,
    ):
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {FLOOR_TABLE} (id bigserial PRIMARY KEY, body bytea)")
        anchors = {
            "alone": raw_loop(model, LOOPS, None),
            "memory": raw_loop(model, LOOPS, InMemorySaver()),
            "postgres": raw_loop(model, LOOPS, stock),
        }
        ours = {"memory": Runner(in_memory, mem_settings, provider), "postgres": Runner(on_pg, pg_settings, provider)}

        async def anchor(kind: str) -> None:
            config = {"configurable": {"thread_id": tid()}}
            durability = {} if kind == "alone" else {"durability": "sync"}  # no checkpointer: nothing to wait for
            await anchors[kind].ainvoke({"query": "Bench query."}, config, **durability)

        async def redraft(kind: str) -> None:
            await ours[kind].refine(tid(), "generic", "Bench query.", max_loops=LOOPS, similarity_threshold=1.0)

        async def floor(_: str) -> None:  # a step's worth of floor statements: one INSERT + COMMIT each
            for _ in range(STEPS):
                await conn.execute(f"INSERT INTO {FLOOR_TABLE} (body) VALUES (%s)", [row])

        cases = [(f"anchor {k}", anchor, k) for k in anchors] + [(f"redraft {k}", redraft, k) for k in ours]
        cases.append(("floor", floor, ""))
        try:
            for i in range(runs + 2):
                for name, call, kind in cases:
                    t0, c0 = time.perf_counter(), time.process_time()
                    await call(kind)
                    if i >= 2:  # the first two rounds warm connections, prepared statements and caches
                        cpu.setdefault(name, []).append((time.process_time() - c0) / STEPS)
                        wall.setdefault(name, []).append((time.perf_counter() - t0) / STEPS)
        finally:
            await conn.execute(f"DROP TABLE IF EXISTS {FLOOR_TABLE}")
    per = {name: statistics.median(v) for name, v in cpu.items()}
    per_wall = {name: statistics.median(v) for name, v in wall.items()}
    pg_anchor = per["anchor postgres"]
    labels = {
        "anchor alone": "raw LangGraph, the anchor's graph, no checkpointer (the superstep and the fake model)",
        "anchor memory": "raw LangGraph on InMemorySaver",
        "anchor postgres": "raw LangGraph on the stock AsyncPostgresSaver (section 0's anchor)",
        "redraft memory": "redraft in memory (its graph, nodes, metering and scoring; no database)",
        "redraft postgres": "redraft on PostgreSQL (its saver, leases, fencing)",
        "floor": "the floor: one INSERT of a ~3 KB row + COMMIT, one connection, no graph",
    }
    wall_anchor = per_wall["anchor postgres"]
    rows = [
        [
            labels[n],
            f"{per[n] * 1000:.3f}",
            f"{per[n] / pg_anchor:.2f}x",
            f"{per_wall[n] * 1000:.3f}",
            f"{per_wall[n] / wall_anchor:.2f}x",
        ]
        for n in labels
    ]
    best_sessions = pg_anchor / per["redraft memory"]
    best_step = per["redraft memory"] / pg_anchor
    best_wall = (per_wall["redraft memory"] + per_wall["floor"]) / wall_anchor
    return {
        "title": "0a. What bounds the per-step and 200-session figures: CPU and wall time per durable step",
        "what": "CPU (user + system) of this process, and wall time, per durable step of a 10-loop refine (21 steps, "
        "zero-latency fake model), median of "
        f"{runs} runs each, the six cases taking turns. The database server's CPU is not counted. At 200 "
        "sessions both sides of section 0 are CPU-bound in one process, so throughput goes as the inverse of this. "
        "Were redraft's database path free, its step would cost 'redraft in memory'. Section 0's per-step figure "
        "is wall time, and a durable step commits at least once: the floor row is one INSERT of a ~3 KB row and its "
        "COMMIT, timed 21 at a time and shown per statement.",
        "headers": ["case", "CPU ms per step", "CPU vs the anchor", "wall ms per step", "wall vs the anchor"],
        "rows": rows,
        "target": "section 0: 200 sessions >= 2x raw needs redraft at <= 0.5x the anchor's CPU per step; "
        "per step <= 0.8x",
        "verdict": f"with a database that cost nothing, 200 sessions could reach at most {best_sessions:.2f}x raw "
        f"(redraft in memory is {best_step:.2f}x the anchor on PostgreSQL in CPU); with one floor statement per "
        f"step, the per-step figure could not go below {best_wall:.2f}x (redraft in memory plus the floor, in wall "
        f"time); LangGraph's superstep alone, on the anchor's three-node graph, is "
        f"{per['anchor alone'] / pg_anchor:.2f}x in CPU",
    }
