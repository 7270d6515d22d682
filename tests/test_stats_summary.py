"""The learned summary ``status`` and ``refine`` show is kept in the database with the window of runs it was computed
from (server/stats.py ``_kept_summary``), and is exactly what computing it gives, on both backends: after runs are
recorded in order, with a replica's clock behind the others, past a full window, and after retention deletes old
runs."""

from __future__ import annotations

import json
import random

from redraft.graph.checkpointer import open_persistence
from redraft.server import stats as stats_module
from redraft.server.stats import StatsStore
from tests.conftest import make_settings
from tests.test_sessions import sql_value


async def _record(stats: StatsStore, db_url: str, rng: random.Random, at: float | None = None) -> None:
    await stats.record(
        "generic",
        "run",
        iterations=rng.randint(1, 8),
        final_similarity=rng.random(),
        stop_reason=rng.choice(["converged", "max_loops", "critic_satisfied"]),
        duration_s=rng.random() * 30,
        detail=json.dumps({"tokens": rng.randint(500, 9000), "cost": rng.random() / 100}),
        model=rng.choice(["gpt-4o-mini", "smollm2", None]),
    )
    if at is not None:  # as a replica whose clock is behind: recorded now, stamped earlier
        newest = sql_value(db_url, "SELECT max(created_at) FROM redraft_stats", ())
        sql_value(db_url, "UPDATE redraft_stats SET created_at = ? WHERE created_at = ?", (at, newest))


async def test_the_kept_summary_is_what_computing_gives_whatever_changed(db_url, stub, monkeypatch):
    monkeypatch.setattr(stats_module, "WINDOW", 6)  # a full window after a few runs
    rng = random.Random(7)
    settings = make_settings(db_url, stub)
    async with open_persistence(settings) as p:
        stats = StatsStore(p.db)

        async def check() -> dict:
            kept = await stats.summary("generic", transitions=False)
            assert kept == await stats.summary("generic", transitions=False)  # read back from the kept copy
            assert kept == await stats._summary("generic", False, None)
            return kept

        assert (await check())["runs"] == 0
        for _ in range(4):
            await _record(stats, db_url, rng)
            await check()
        # a run stamped before the newest (a replica with a slow clock) still lands in the window
        times = sorted(r["created_at"] for r in await p.db.fetchall("SELECT created_at FROM redraft_stats"))
        await _record(stats, db_url, rng, at=(times[1] + times[2]) / 2)
        assert (await check())["runs"] == 5
        for _ in range(4):  # past a full window: each new run pushes the oldest out
            await _record(stats, db_url, rng)
            assert (await check())["runs"] == 6
        await _record(stats, db_url, rng, at=(times[0] + times[1]) / 2)  # older than the whole window
        await check()
        # retention deletes the oldest runs: a window that loses rows is computed again
        await p.db.execute(
            "DELETE FROM redraft_stats WHERE id IN (SELECT id FROM redraft_stats ORDER BY created_at LIMIT 7)"
        )
        left = sql_value(db_url, "SELECT count(*) FROM redraft_stats", ())
        assert left == 3 and (await check())["runs"] == 3
        # the kept copy is what a matching window reads (tampered here, so it shows), and a new run replaces it
        sql_value(db_url, "UPDATE redraft_stats_summary SET summary = ?", (json.dumps({"runs": -1}),))
        assert await stats.summary("generic", transitions=False) == {"runs": -1}
        await _record(stats, db_url, rng)
        assert (await check())["runs"] == 4
