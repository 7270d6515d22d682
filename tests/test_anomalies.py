"""Anomalies (issue 21 item 7): once a companion (or model) has the minimum of recorded runs, a finished run beyond
the 95th percentile of their iterations, duration, tokens or cost is flagged in its result and in the stats, and
logged, with the figure and the norm it broke; nothing is flagged under the minimum. Real database (SQLite and
PostgreSQL), real runs through the stub model."""

from __future__ import annotations

import logging

from redraft.graph.anomalies import anomalies, figures, norms, percentile
from redraft.graph.checkpointer import open_persistence
from redraft.graph.runner import Runner
from redraft.server.stats import MIN_RUNS, StatsStore
from tests.conftest import make_settings, new_thread


def test_percentile_and_norms_need_the_minimum():
    assert percentile([1, 2, 3]) == 3 and percentile(list(range(1, 21))) == 19 and percentile([5]) == 5
    rows = [{"iterations": 2, "tokens": 100, "cost": None, "duration_s": None}] * (MIN_RUNS - 1)
    assert norms(rows, MIN_RUNS) == {}
    rows = [*rows, {"iterations": 4, "tokens": 300, "cost": None, "duration_s": 1.0}]
    known = norms(rows, MIN_RUNS)
    assert set(known) == {"iterations", "tokens"}  # cost and duration: too few runs recorded them
    assert known["tokens"] == {"runs": MIN_RUNS, "median": 100.0, "p95": 300.0}
    summary = {"companion": "generic", "norms": known, "by_model": {}}
    flags = anomalies({"iterations": 5, "tokens": 300, "cost": 9.0, "duration_s": 60.0}, summary, "m")
    assert flags == [
        {
            "metric": "iterations",
            "value": 5,
            "p95": 4.0,
            "median": 2.0,
            "runs": 3,
            "scope": "companion",
            "companion": "generic",
        }
    ]  # tokens equal to the p95 are not beyond it; cost and duration have no norm


async def _run(runner: Runner, stats: StatsStore, query: str, loops: int) -> tuple[dict, list[dict]]:
    result = await runner.refine(new_thread(), "generic", query, max_loops=loops, similarity_threshold=1.0)
    summary = await stats.summary("generic", transitions=False)
    flags = await stats.record_call("generic", "refine", result, result["duration_s"], True)
    return {**result, "summary": summary}, flags


async def test_a_run_beyond_the_norm_is_flagged_logged_and_listed_only_past_the_minimum(db_url, stub, caplog):
    stub.configure(usage="words", changes=[5])
    settings = make_settings(db_url, stub, prices={"stub-model": {"input": 1.0, "output": 1.0}})
    caplog.set_level(logging.WARNING, logger="redraft.stats")
    async with open_persistence(settings) as p:
        runner, stats = Runner(p, settings), StatsStore(p.db)
        for i in range(MIN_RUNS - 1):
            await _run(runner, stats, f"Usual run {i}.", 1)
        # a long run with too few recorded before it: nothing to compare with, nothing flagged
        early, flags = await _run(runner, stats, "Long but early.", 4)
        assert flags == [] and early["summary"]["norms"] == {} and early["summary"]["anomalies"] == []
        assert "anomalous" not in caplog.text
        # now MIN_RUNS runs are recorded (one of them long): the longest so far is the norm's p95
        for i in range(3):
            await _run(runner, stats, f"Usual again {i}.", 1)
        usual, flags = await _run(runner, stats, "Usual after the minimum.", 1)
        # (its duration is left out: on a loaded machine a short run may take longer than the long one did)
        assert [f for f in flags if f["metric"] != "duration_s"] == []
        assert {"iterations", "tokens", "cost"} <= set(usual["summary"]["norms"])
        outlier, flags = await _run(runner, stats, "Far beyond the norm.", 6)
    by_metric = {f["metric"]: f for f in flags if f["scope"] == "companion"}
    assert {"iterations", "tokens", "cost"} <= set(by_metric)
    norm = outlier["summary"]["norms"]
    tokens = by_metric["tokens"]
    assert tokens["value"] == outlier["usage"]["query"]["total_tokens"] > norm["tokens"]["p95"] == tokens["p95"]
    assert by_metric["iterations"] == {
        "metric": "iterations",
        "value": 6,
        "p95": 4.0,
        "median": 1.0,
        "runs": MIN_RUNS + 4,
        "scope": "companion",
        "companion": "generic",
    }
    assert any(f["scope"] == "model" and f["model"] == "stub-model" for f in flags)
    assert "anomalous generic run: iterations 6 is beyond the 95th percentile 4.0 of 7 recorded runs" in caplog.text
    async with open_persistence(settings) as p:
        summary = await StatsStore(p.db).summary("generic")
    listed = [f for f in summary["anomalies"] if f["scope"] == "companion"]
    assert {f["metric"] for f in listed} >= {"iterations", "tokens", "cost"} and all(f["at"] for f in listed)
    assert summary["suggestions"]["typical_tokens"] > 0 and summary["suggestions"]["typical_cost"] > 0
    assert summary["by_model"]["stub-model"]["anomalies"]


def test_figures_of_a_finished_query():
    data = {
        "slot": {"revision": ["a", "b"]},
        "usage": {"query": {"calls": 5, "total_tokens": 900, "cost": None}},
    }
    assert figures(data, 2.5) == {"iterations": 2, "duration_s": 2.5, "tokens": 900, "cost": None}
    assert figures({"slot": {"revision": []}}, None)["tokens"] is None  # no recorded calls: no token figure
