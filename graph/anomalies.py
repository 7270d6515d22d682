"""Anomalies: a finished run whose iterations, duration, tokens or cost lie beyond the 95th percentile of the runs
recorded before it, for its companion or for its model.

Norms come from recorded runs only (the learning stats, server/stats.py): a figure has a norm once at least
``minimum`` recorded runs have it (the same minimum the suggestions need), and nothing is flagged without one. The
95th percentile is the nearest-rank one (the value at rank ceil(0.95 n) of the n sorted figures): with few runs it
is their maximum, so a run is flagged only when it exceeds every run before it. "Beyond" is strictly greater.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

METRICS = ("iterations", "duration_s", "tokens", "cost")
PERCENTILE = 0.95


def percentile(values: Sequence[float], q: float = PERCENTILE) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def norms(rows: Sequence[dict], minimum: int) -> dict[str, dict]:
    """Per metric with at least ``minimum`` recorded figures: their count, median and 95th percentile."""
    out: dict[str, dict] = {}
    for metric in METRICS:
        values = [float(r[metric]) for r in rows if r.get(metric) is not None]
        if len(values) >= minimum:
            out[metric] = {
                "runs": len(values),
                "median": round(statistics.median(values), 10),
                "p95": round(percentile(values), 10),
            }
    return out


def figures(data: dict, duration_s: float | None = None) -> dict:
    """A finished query's figures from its thread view: revisions, the run's duration (if it was one whole run),
    and the query's tokens and cost (cost None when a price is unknown)."""
    query = (data.get("usage") or {}).get("query") or {}
    return {
        "iterations": len((data.get("slot") or {}).get("revision") or []),
        "duration_s": duration_s,
        "tokens": query.get("total_tokens") if query.get("calls") else None,
        "cost": query.get("cost") if query.get("calls") else None,
    }


def flag(found: dict, known: dict[str, dict], scope: str, name: str) -> list[dict]:
    """Each figure of ``found`` beyond its norm in ``known``: the figure and the norm it broke."""
    flags = []
    for metric in METRICS:
        value, norm = found.get(metric), known.get(metric)
        if value is None or norm is None or not value > norm["p95"]:
            continue
        flags.append(
            {
                "metric": metric,
                "value": value,
                "p95": norm["p95"],
                "median": norm["median"],
                "runs": norm["runs"],
                "scope": scope,
                scope: name,
            }
        )
    return flags


def anomalies(found: dict, summary: dict | None, model: str | None) -> list[dict]:
    """Flags for a run with figures ``found`` against a companion's learned stats (``StatsStore.summary``, taken
    before this run was recorded): its companion's norms, then its model's."""
    if not summary:
        return []
    flags = flag(found, summary.get("norms") or {}, "companion", summary.get("companion", ""))
    by_model = (summary.get("by_model") or {}).get(model or "") if model else None
    if by_model:
        flags += flag(found, by_model.get("norms") or {}, "model", model or "")
    return flags


def describe(flag_: dict) -> str:
    """One log line's worth: what broke which norm."""
    unit = {"duration_s": " s", "cost": " USD"}.get(flag_["metric"], "")
    return (
        f"{flag_['metric']} {flag_['value']}{unit} is beyond the 95th percentile {flag_['p95']}{unit} of "
        f"{flag_['runs']} recorded runs (median {flag_['median']}{unit}) for {flag_['scope']} {flag_[flag_['scope']]}"
    )
