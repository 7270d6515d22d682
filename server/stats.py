"""What redraft learns per companion type and model, kept in the database (``redraft_stats``) so it survives
restarts and is shared by every server process and the CLI. Suggestions are computed from recorded runs only: with
too little data they say so instead of inventing numbers.

Every advancing call records here, whoever made it: MCP tool calls (``LearningMiddleware``), MCP tasks and
background runs (``server/tasks.py``) and ``redraft run`` / ``redraft resume``. Each row names the model that
served it (the thread's sampling: the companion's model, the setting, or a per-call override), so the summary is
split by companion and, within it, by model.

A finished run's row also keeps the query's tokens and cost, and the anomalies it showed (graph/anomalies.py), as
JSON in its ``detail``. The summary's ``norms`` say what a typical run takes (median and 95th percentile of
iterations, duration, tokens and cost, once ``MIN_RUNS`` runs have each figure) and ``anomalies`` lists recent runs
beyond them."""

from __future__ import annotations

import json
import logging
import statistics
import time
import uuid

from redraft.graph.anomalies import anomalies, describe, figures, norms
from redraft.graph.database import Database
from redraft.nodes.roles import model_label

WINDOW = 500  # most recent runs considered per companion
MIN_RUNS = 3  # fewer than this: no suggestion, just the count
UNKNOWN_MODEL = "unknown"  # rows recorded before stats named their model
ANOMALIES_SHOWN = 50  # most recent runs whose anomalies a summary lists

log = logging.getLogger("redraft.stats")


def model_of(data: dict) -> str | None:
    """The model that served a call, from the thread view it returned (``drafter=a critic=b reviser=c`` when a
    companion gives its roles different models)."""
    return model_label((data.get("slot") or {}).get("sampling"))


class StatsStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def record_call(self, companion: str, name: str, data: dict, elapsed: float, full_run: bool) -> list[dict]:
        """What one advancing call (a tool call, a task's run, a CLI run) teaches: its phase transition and time
        and, when it finished a query, the run's iterations, final similarity, stop reason, (for a whole run)
        duration, and the query's tokens and cost; all under the model that served it. A finished run beyond the
        norms of the runs recorded before it is logged and recorded with its anomalies, which are returned."""
        model = model_of(data)
        await self.record(companion, "transition", duration_s=elapsed, detail=f"{name}->{data['phase']}", model=model)
        if data["phase"] != "done" or not data.get("stop_reason"):
            return []
        found = figures(data, elapsed if full_run else None)
        flags = anomalies(found, await self.summary(companion, transitions=False), model)
        for one in flags:
            log.warning("anomalous %s run: %s", companion, describe(one))
        detail = {"tokens": found["tokens"], "cost": found["cost"], **({"anomalies": flags} if flags else {})}
        await self.record(
            companion,
            "run",
            iterations=found["iterations"],
            final_similarity=(data.get("similarities") or [None])[-1],
            stop_reason=data["stop_reason"],
            duration_s=found["duration_s"],
            detail=json.dumps(detail),
            model=model,
        )
        return flags

    async def record_quietly(self, companion: str, name: str, data: dict, elapsed: float, full_run: bool) -> list[dict]:
        """``record_call`` for callers whose own work is done (the CLI): a stats failure is logged, not raised."""
        try:
            return await self.record_call(companion, name, data, elapsed, full_run)
        except Exception:
            log.warning("could not record stats for %s", name, exc_info=True)
            return []

    async def record(
        self,
        companion: str,
        kind: str,
        *,
        iterations: int | None = None,
        final_similarity: float | None = None,
        stop_reason: str | None = None,
        duration_s: float | None = None,
        detail: str | None = None,
        model: str | None = None,
    ) -> None:
        await self.db.execute(
            "INSERT INTO redraft_stats (id, companion, kind, created_at, iterations, final_similarity, stop_reason,"
            " duration_s, detail, model) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                uuid.uuid4().hex,
                companion,
                kind,
                time.time(),
                iterations,
                final_similarity,
                stop_reason,
                duration_s,
                detail,
                model,
            ),
        )

    async def summary(self, companion: str, transitions: bool = True, model: str | None = None) -> dict:
        """Runs, stop reasons and suggestions of a companion (of one ``model`` of it, if given), with the same
        split ``by_model``; with ``transitions``, also per-transition step times."""
        if not transitions and model is None:
            return await self._kept_summary(companion)
        return await self._summary(companion, transitions, model)

    async def _kept_summary(self, companion: str) -> dict:
        """The summary ``status`` and ``refine`` show and a finished run is compared with (``summary(companion,
        transitions=False)``): the copy kept in ``redraft_stats_summary`` when the window it was computed from (the
        companion's ``WINDOW`` most recent runs: their count, newest and oldest time) is still the window, else
        computed and kept. Computing it reads and digests the window's rows, 3.5 ms of CPU at 500 recorded runs
        on every such call, where the check reads the window's times from an index (0.3 ms).

        Only the window's rows go into the summary, and rows are never updated: a run recorded since changes the
        count (a short window) or pushes the oldest out (a full one), whatever its replica's clock said; retention
        deletes the oldest rows, which changes the count or nothing. So a copy whose window matches is what
        computing would give, and a copy a slower replica overwrote with an older one no longer matches."""
        found = await self.db.fetchone(
            "SELECT w.runs, w.newest, w.oldest, s.runs AS kept_runs, s.newest AS kept_newest, "
            "s.oldest AS kept_oldest, s.summary FROM (SELECT count(*) AS runs, max(created_at) AS newest, "
            "min(created_at) AS oldest FROM (SELECT created_at FROM redraft_stats WHERE companion = ? "
            "AND kind = 'run' ORDER BY created_at DESC LIMIT ?) AS recent) AS w "
            "LEFT JOIN redraft_stats_summary AS s ON s.companion = ?",
            (companion, WINDOW, companion),
        )
        window = (found["runs"], found["newest"], found["oldest"]) if found else (0, None, None)
        if not window[0]:  # no run recorded: what digesting none gives, without reading them
            return _digest(companion, None, [])
        if found["summary"] is not None and (found["kept_runs"], found["kept_newest"], found["kept_oldest"]) == window:
            return json.loads(found["summary"])
        out = await self._summary(companion, False, None)
        await self.db.execute(
            "INSERT INTO redraft_stats_summary (companion, runs, newest, oldest, summary) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (companion) DO UPDATE SET runs = excluded.runs, newest = excluded.newest, "
            "oldest = excluded.oldest, summary = excluded.summary",
            (companion, *window, json.dumps(out)),
        )
        return out

    async def _summary(self, companion: str, transitions: bool, model: str | None) -> dict:
        where, params = "companion = ?", [companion]
        if model is not None:
            where += " AND coalesce(model, ?) = ?"
            params += [UNKNOWN_MODEL, model]
        runs = await self.db.fetchall(
            "SELECT iterations, final_similarity, stop_reason, duration_s, model, detail, created_at "
            f"FROM redraft_stats WHERE {where} AND kind = 'run' ORDER BY created_at DESC LIMIT ?",
            (*params, WINDOW),
        )
        seconds = None
        if transitions:
            steps = await self.db.fetchall(
                f"SELECT detail, duration_s FROM redraft_stats WHERE {where} AND kind = 'transition' "
                "ORDER BY created_at DESC LIMIT ?",
                (*params, WINDOW),
            )
            by_label: dict[str, list[float]] = {}
            for s in steps:
                by_label.setdefault(s["detail"], []).append(s["duration_s"])
            seconds = {k: {"count": len(v), "median": statistics.median(v)} for k, v in by_label.items()}
        return _digest(companion, model, [_with_detail(r) for r in runs], seconds)


def _digest(companion: str, model: str | None, runs: list[dict], transition_seconds: dict | None = None) -> dict:
    """A summary from its runs (newest first, details parsed) and, if given, its per-transition step times."""
    out: dict = {"companion": companion, **({"model": model} if model is not None else {}), **_learned(runs)}
    if transition_seconds is not None:
        out["transition_seconds"] = transition_seconds
    by_model: dict[str, list[dict]] = {}
    for r in runs:
        by_model.setdefault(r["model"] or UNKNOWN_MODEL, []).append(r)
    out["by_model"] = {name: {"model": name, **_learned(rows)} for name, rows in sorted(by_model.items())}
    return out


def _learned(runs: list[dict]) -> dict:
    """Run count, stop reasons and suggestions (or a note saying why there are none) from recorded runs."""
    out: dict = {"runs": len(runs)}
    stop_reasons: dict[str, int] = {}
    for r in runs:
        stop_reasons[r["stop_reason"]] = stop_reasons.get(r["stop_reason"], 0) + 1
    out["stop_reasons"] = stop_reasons
    if len(runs) < MIN_RUNS:
        out["norms"] = {}
        out["anomalies"] = []
        out["suggestions"] = None
        out["note"] = f"Not enough data yet: {len(runs)} finished run(s) recorded, suggestions need {MIN_RUNS}."
        return out
    iterations = [r["iterations"] for r in runs]
    settled = [r["final_similarity"] for r in runs if r["final_similarity"] is not None]
    durations = [r["duration_s"] for r in runs if r["duration_s"] is not None]
    suggestions: dict = {
        "typical_iterations": statistics.median(iterations),
        "iterations_p90": _quantile(iterations, 0.9),
    }
    if len(settled) >= MIN_RUNS:
        # the similarity at which texts typically stopped changing: a threshold above it rarely fires
        suggestions["recommended_threshold"] = round(min(0.999, max(0.5, statistics.median(settled))), 4)
    if len(durations) >= MIN_RUNS:
        suggestions["estimated_completion_s"] = round(statistics.median(durations), 3)
    known = norms(runs, MIN_RUNS)
    if "tokens" in known:
        suggestions["typical_tokens"] = known["tokens"]["median"]
    if "cost" in known:
        suggestions["typical_cost"] = known["cost"]["median"]
    out["suggestions"] = suggestions
    # what a typical run takes (median, 95th percentile) per figure with enough data; runs beyond it, newest first
    out["norms"] = known
    out["anomalies"] = [
        {**flag, "at": r.get("created_at")} for r in runs[:ANOMALIES_SHOWN] for flag in r.get("anomalies") or []
    ]
    return out


def _with_detail(row: dict) -> dict:
    """A run row with the tokens, cost and anomalies recorded in its ``detail`` (JSON; older rows have none)."""
    try:
        detail = json.loads(row.get("detail") or "{}")
    except ValueError:
        detail = {}
    detail = detail if isinstance(detail, dict) else {}
    return {**row, "tokens": detail.get("tokens"), "cost": detail.get("cost"), "anomalies": detail.get("anomalies")}


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
