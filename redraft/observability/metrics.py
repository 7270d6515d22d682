"""Prometheus metrics (``prometheus-client``), served at ``/metrics`` (server/ops.py).

Two kinds of numbers:

* **Per process** -- counters and histograms of what this process did (tool calls, steps, model calls, tokens,
  checkpoint bytes, storage errors, lease takeovers) and ``redraft_steps_in_progress``. Sum them over replicas.
* **Database-wide** -- ``redraft_sessions_active``, ``redraft_runs_active`` and ``redraft_run_queue_depth`` are read
  from the shared database at scrape time (``refresh_from_database``), so every replica reports the same value: take
  ``max()`` over replicas, never ``sum()``.

Label cardinality is bounded: no session, thread or run ids in labels; tool and model names are client-influenced
(an unknown tool, a per-call model override), so each label keeps at most ``MAX_LABEL_VALUES`` distinct values and
maps the rest to ``other``.

Metrics are on in a server (``enable``, called by ``create_server``), off elsewhere: the CLI never imports
``prometheus-client`` (~50-150 ms of start-up), and every hook is then a ``None`` check.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from typing import Any

log = logging.getLogger("redraft.observability")

MAX_LABEL_VALUES = 64
_LABEL_OK = re.compile(r"^[A-Za-z0-9_.:/\-]{1,80}$")

# Seconds. Tool calls and steps span a fast read (milliseconds) to a long refine (minutes).
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class BoundedLabel:
    """Label values as given while fewer than ``limit`` distinct ones were seen (and they look like names); then
    ``other``. Thread-safe: the OTel and Prometheus clients may run on other threads."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self.limit = limit
        self.seen: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        if not value:
            return "unknown"
        if value in self.seen:
            return value
        if not _LABEL_OK.match(value):
            return "other"
        with self.lock:
            if len(self.seen) >= self.limit:
                return "other"
            self.seen.add(value)
        return value


tool_label = BoundedLabel()
model_label = BoundedLabel()


class Metrics:
    """redraft's metrics, registered once per process in prometheus-client's default registry."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # no ``*_created`` series: Prometheus does not need them; they double the text
        self.tool_calls = Counter(
            "redraft_tool_calls", "MCP tool calls by tool and outcome code (ok, or the error code)", ["tool", "code"]
        )
        self.tool_latency = Histogram(
            "redraft_tool_call_duration_seconds", "MCP tool call latency", ["tool"], buckets=CALL_BUCKETS
        )
        self.steps = Counter(
            "redraft_steps",
            "Graph steps by node and outcome (ok, interrupted, cancelled, or the error code)",
            ["node", "outcome"],
        )
        self.step_latency = Histogram(
            "redraft_step_duration_seconds", "Graph step latency by node", ["node"], buckets=STEP_BUCKETS
        )
        self.steps_in_progress = Gauge("redraft_steps_in_progress", "Graph steps running in this process", ["node"])
        roles = ["role", "model"]
        self.model_calls = Counter("redraft_model_calls", "Model calls by role (draft, critique, revision)", roles)
        self.model_latency = Histogram(
            "redraft_model_call_duration_seconds", "Model call latency by role and model", roles, buckets=STEP_BUCKETS
        )
        self.model_input_tokens = Counter(
            "redraft_model_input_tokens", "Prompt tokens the model endpoint reported, by role and model", roles
        )
        self.model_output_tokens = Counter(
            "redraft_model_output_tokens", "Completion tokens the model endpoint reported, by role and model", roles
        )
        self.model_errors = Counter(
            "redraft_model_errors",
            "Failed model calls by role, model and kind (rate_limited, timeout, connection, auth, malformed, "
            "http_4xx, http_5xx, context_overflow, server_error, cancelled, other)",
            ["role", "model", "kind"],
        )
        self.checkpoint_bytes = Counter(
            "redraft_checkpoint_bytes_written",
            "Serialised checkpoint bytes (channel values and pending writes) written",
        )
        self.storage_errors = Counter("redraft_storage_errors", "Database failures turned into storage_error")
        self.lease_takeovers = Counter(
            "redraft_lease_takeovers",
            "Step leases granted over another holder's expired lease (a crashed or stalled replica's thread taken "
            "over)",
        )
        self.history_reads = Counter(
            "redraft_history_reads",
            "Reads of a thread's delta-channel history for a step, by source: walk (the database) or last_run (the "
            "values this process's last run on the thread committed; a step whose previous step ran on another "
            "replica walks)",
            ["source"],
        )
        self.snapshot_reads = Counter(
            "redraft_snapshot_reads",
            "Delta-channel snapshots a walk of a thread's history started from (PostgreSQL), by source: fetched (sent "
            "by the database and decoded) or reused (the decoded copy this process held, same blob size)",
            ["source"],
        )
        self.sessions_active = Gauge(
            "redraft_sessions_active", "Sessions not yet idle-expired (database-wide: the same on every replica)"
        )
        self.runs_active = Gauge(
            "redraft_runs_active", "Background runs running (database-wide: the same on every replica)"
        )
        self.run_queue_depth = Gauge(
            "redraft_run_queue_depth",
            "Background runs queued, waiting for a worker (database-wide: the same on every replica)",
        )
        self.database_scrape_errors = Counter(
            "redraft_metrics_database_errors", "Scrapes whose database-wide gauges could not be refreshed (values kept)"
        )
        self._steps: dict[str, tuple[Any, Any, Any]] = {}
        self._models: dict[tuple[str, str], tuple[Any, Any, Any, Any]] = {}

    def step_series(self, node: str) -> tuple[Any, Any, Any]:
        """(ok steps, latency, in progress) for a node, looked up once."""
        found = self._steps.get(node)
        if found is None:
            found = self._steps[node] = (
                self.steps.labels(node, "ok"),
                self.step_latency.labels(node),
                self.steps_in_progress.labels(node),
            )
        return found

    def model_series(self, role: str, model: str) -> tuple[Any, Any, Any, Any]:
        """(calls, latency, input tokens, output tokens) for a role and model, looked up once."""
        found = self._models.get((role, model))
        if found is None:
            label = model_label(model)
            found = self._models[(role, model)] = (
                self.model_calls.labels(role, label),
                self.model_latency.labels(role, label),
                self.model_input_tokens.labels(role, label),
                self.model_output_tokens.labels(role, label),
            )
        return found


_metrics: Metrics | None = None
_enabling = threading.Lock()


def enable() -> Metrics:
    """Turn metrics on for this process (idempotent)."""
    global _metrics
    with _enabling:
        if _metrics is None:
            _metrics = Metrics()
    return _metrics


def current() -> Metrics | None:
    """The metrics when on, else None: what every hook checks first."""
    return _metrics


def tool_called(tool: str, code: str, seconds: float) -> None:
    m = _metrics
    if m is not None:
        name = tool_label(tool)
        m.tool_calls.labels(name, code).inc()
        m.tool_latency.labels(name).observe(seconds)


def checkpoint_written(size: int) -> None:
    m = _metrics
    if m is not None:
        m.checkpoint_bytes.inc(size)


def storage_failed() -> None:
    m = _metrics
    if m is not None:
        m.storage_errors.inc()


def lease_taken_over() -> None:
    m = _metrics
    if m is not None:
        m.lease_takeovers.inc()


def history_read(source: str) -> None:
    m = _metrics
    if m is not None:
        m.history_reads.labels(source).inc()


def snapshot_reads(reused: int, fetched: int) -> None:
    m = _metrics
    if m is not None:
        if reused:
            m.snapshot_reads.labels("reused").inc(reused)
        if fetched:
            m.snapshot_reads.labels("fetched").inc(fetched)


# --- database-wide gauges, read at scrape time ------------------------------------------------------------------

_RUNS_SQL = "SELECT status, count(*) AS n FROM redraft_runs WHERE status IN ('queued', 'running') GROUP BY status"
_SESSIONS_SQL = "SELECT count(*) AS n FROM redraft_sessions WHERE last_accessed > ?"


async def refresh_from_database(db, session_ttl_seconds: float, limit_s: float = 1.0) -> bool:
    """Set the database-wide gauges from ``db`` (``graph.database.Database``: ``fetchall``/``fetchone``), within
    ``limit_s`` seconds; on failure the gauges keep their last values and ``redraft_metrics_database_errors`` counts
    it."""
    m = enable()
    try:
        async with asyncio.timeout(limit_s):
            rows = await db.fetchall(_RUNS_SQL)
            sessions = await db.fetchone(_SESSIONS_SQL, (time.time() - session_ttl_seconds,))
    except Exception as exc:  # the scrape still answers with everything else
        m.database_scrape_errors.inc()
        log.warning("metrics: could not read the database-wide gauges (%s)", type(exc).__name__)
        return False
    counts = {row["status"]: int(row["n"]) for row in rows}
    m.runs_active.set(counts.get("running", 0))
    m.run_queue_depth.set(counts.get("queued", 0))
    m.sessions_active.set(int((sessions or {}).get("n") or 0))
    return True


def exposition() -> tuple[bytes, str]:
    """The text exposition of every registered metric (redraft's, the process collector's, and any library's that
    registers in prometheus-client's default registry) and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    enable()
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
