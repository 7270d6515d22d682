"""One process of the concurrency benchmark: `python -m bench.worker KIND URL`.

KIND is ``redraft`` (Runner.refine, what a `redraft serve` process runs for each refine call), ``raw`` (the
smallest raw LangGraph loop on the same saver) or ``stock`` (that loop on LangGraph's own AsyncPostgresSaver: the
anchor). The process imports and opens its saver, prints ``ready``, then
answers one JSON command per stdin line -- ``{"sessions", "loops", "latency", "stagger"}`` -- by running that many
runs at once and printing one JSON line: steps, wall and CPU seconds, and each run's duration. The parent sends a
command to every process at the same moment, so start-up never counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.baselines import raw_loop, stock_postgres
from bench.fake import FakeProvider
from bench.sections import settings_for, tid
from redraft.graph.checkpointer import open_persistence
from redraft.graph.runner import Runner


async def main(kind: str, url: str) -> None:
    # several replicas on one database share its max_connections: the parent may ask for smaller pools
    settings = settings_for(url, pool_max_size=int(os.environ.get("REDRAFT_BENCH_POOL_MAX_SIZE", "40")))
    provider = FakeProvider(settings, changes=[30])
    async with open_persistence(settings) as p, contextlib.AsyncExitStack() as stack:
        runner = Runner(p, settings, provider)
        saver = await stack.enter_async_context(stock_postgres(url)) if kind == "stock" else p.saver
        graphs: dict[int, object] = {}
        gc.freeze()  # as `redraft serve` does once started: full collections skip the import-time heap
        print("ready", flush=True)
        while line := await asyncio.to_thread(sys.stdin.readline):
            cmd = json.loads(line)
            loops, latency = cmd["loops"], cmd["latency"]
            provider.model.latency = latency
            if loops not in graphs:
                graphs[loops] = raw_loop(provider.model, loops, saver)
            raw = graphs[loops]
            durations: list[float] = []
            errors: list[str] = []

            async def one(
                i, loops=loops, latency=latency, stagger=cmd["stagger"], raw=raw, durations=durations, errors=errors
            ):
                if stagger:  # arrivals spread over one model latency, not all at the same instant
                    await asyncio.sleep(random.uniform(0, latency))
                started = time.perf_counter()
                try:
                    if kind == "redraft":
                        await runner.refine(tid(), "generic", f"Run {i}.", max_loops=loops, similarity_threshold=1.0)
                    else:
                        config = {"configurable": {"thread_id": tid()}}
                        await raw.ainvoke({"query": f"Run {i}."}, config, durability="sync")
                except Exception as exc:  # counted and reported, so one failed run does not end the measurement
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    return
                durations.append(time.perf_counter() - started)

            t0, cpu0 = time.perf_counter(), time.process_time()
            await asyncio.gather(*(one(i) for i in range(cmd["sessions"])))
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            print(json.dumps({"wall": wall, "cpu": cpu, "durations": durations, "errors": errors}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
