"""What redraft learns per companion type, kept in the database (``redraft_stats``) so it survives restarts and is
shared by every server process. Suggestions are computed from recorded runs only: with too little data they say so
instead of inventing numbers."""

from __future__ import annotations

import statistics
import time
import uuid

from redraft.graph.database import Database

WINDOW = 500  # most recent runs considered per companion
MIN_RUNS = 3  # fewer than this: no suggestion, just the count


class StatsStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def record_call(self, companion: str, name: str, data: dict, elapsed: float, full_run: bool) -> None:
        """What one advancing call (a tool call or a task's run) teaches: its phase transition and time and, when it
        finished a query, the run's iterations, final similarity, stop reason and (for a whole run) duration."""
        await self.record(companion, "transition", duration_s=elapsed, detail=f"{name}->{data['phase']}")
        if data["phase"] == "done" and data.get("stop_reason"):
            await self.record(
                companion,
                "run",
                iterations=len((data.get("slot") or {}).get("revision") or []),
                final_similarity=(data.get("similarities") or [None])[-1],
                stop_reason=data["stop_reason"],
                duration_s=elapsed if full_run else None,
            )

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
    ) -> None:
        await self.db.execute(
            "INSERT INTO redraft_stats (id, companion, kind, created_at, iterations, final_similarity, stop_reason,"
            " duration_s, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            ),
        )

    async def summary(self, companion: str, transitions: bool = True) -> dict:
        """Runs, stop reasons and suggestions; with ``transitions``, also per-transition step times."""
        runs = await self.db.fetchall(
            "SELECT iterations, final_similarity, stop_reason, duration_s FROM redraft_stats "
            "WHERE companion = ? AND kind = 'run' ORDER BY created_at DESC LIMIT ?",
            (companion, WINDOW),
        )
        steps = []
        if transitions:
            steps = await self.db.fetchall(
                "SELECT detail, duration_s FROM redraft_stats WHERE companion = ? AND kind = 'transition' "
                "ORDER BY created_at DESC LIMIT ?",
                (companion, WINDOW),
            )
        out: dict = {"companion": companion, "runs": len(runs)}
        stop_reasons: dict[str, int] = {}
        for r in runs:
            stop_reasons[r["stop_reason"]] = stop_reasons.get(r["stop_reason"], 0) + 1
        out["stop_reasons"] = stop_reasons
        if transitions:
            by_label: dict[str, list[float]] = {}
            for s in steps:
                by_label.setdefault(s["detail"], []).append(s["duration_s"])
            out["transition_seconds"] = {
                k: {"count": len(v), "median": statistics.median(v)} for k, v in by_label.items()
            }
        if len(runs) < MIN_RUNS:
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
        out["suggestions"] = suggestions
        return out


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
