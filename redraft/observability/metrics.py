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
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics

log = logging.getLogger("redraft.observability")
disable_created_metrics()  # no ``*_created`` series: Prometheus does not need them and they double the exposition

MAX_LABEL_VALUES = 64
_LABEL_OK = re.compile(r"^[A-Za-z0-9_.:/\-]{1,80}$")

# Seconds. Tool calls and steps span a fast read (milliseconds) to a long refine (minutes).
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

TOOL_CALLS = Counter(
    "redraft_tool_calls", "MCP tool calls by tool and outcome code (ok, or the error code)", ["tool", "code"]
)
TOOL_LATENCY = Histogram("redraft_tool_call_duration_seconds", "MCP tool call latency", ["tool"], buckets=CALL_BUCKETS)
STEPS = Counter(
    "redraft_steps",
    "Graph steps by node and outcome (ok, interrupted, cancelled, or the error code)",
    ["node", "outcome"],
)
STEP_LATENCY = Histogram("redraft_step_duration_seconds", "Graph step latency by node", ["node"], buckets=STEP_BUCKETS)
STEPS_IN_PROGRESS = Gauge("redraft_steps_in_progress", "Graph steps running in this process", ["node"])
MODEL_CALLS = Counter(
    "redraft_model_calls", "Model calls by role (draft, critique, revise) and model", ["role", "model"]
)
MODEL_LATENCY = Histogram(
    "redraft_model_call_duration_seconds",
    "Model call latency by role and model",
    ["role", "model"],
    buckets=STEP_BUCKETS,
)
MODEL_INPUT_TOKENS = Counter(
    "redraft_model_input_tokens", "Prompt tokens the model endpoint reported, by role and model", ["role", "model"]
)
MODEL_OUTPUT_TOKENS = Counter(
    "redraft_model_output_tokens", "Completion tokens the model endpoint reported, by role and model", ["role", "model"]
)
MODEL_ERRORS = Counter(
    "redraft_model_errors",
    "Failed model calls by role, model and kind (rate_limited, timeout, connection, auth, malformed, http_4xx, "
    "http_5xx, context_overflow, server_error, cancelled, other)",
    ["role", "model", "kind"],
)
CHECKPOINT_BYTES = Counter(
    "redraft_checkpoint_bytes_written", "Serialised checkpoint bytes (channel values and pending writes) written"
)
STORAGE_ERRORS = Counter("redraft_storage_errors", "Database failures turned into storage_error")
LEASE_TAKEOVERS = Counter(
    "redraft_lease_takeovers",
    "Step leases granted over another holder's expired lease (a crashed or stalled replica's thread taken over)",
)
SESSIONS_ACTIVE = Gauge(
    "redraft_sessions_active", "Sessions not yet idle-expired (database-wide: the same on every replica)"
)
RUNS_ACTIVE = Gauge("redraft_runs_active", "Background runs running (database-wide: the same on every replica)")
RUN_QUEUE_DEPTH = Gauge(
    "redraft_run_queue_depth", "Background runs queued, waiting for a worker (database-wide: the same on every replica)"
)
DATABASE_SCRAPE_ERRORS = Counter(
    "redraft_metrics_database_errors", "Scrapes whose database-wide gauges could not be refreshed (values kept)"
)


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


def tool_called(tool: str, code: str, seconds: float) -> None:
    name = tool_label(tool)
    TOOL_CALLS.labels(name, code).inc()
    TOOL_LATENCY.labels(name).observe(seconds)


def checkpoint_written(size: int) -> None:
    CHECKPOINT_BYTES.inc(size)


def storage_failed() -> None:
    STORAGE_ERRORS.inc()


def lease_taken_over() -> None:
    LEASE_TAKEOVERS.inc()


# --- database-wide gauges, read at scrape time ------------------------------------------------------------------

_RUNS_SQL = "SELECT status, count(*) AS n FROM redraft_runs WHERE status IN ('queued', 'running') GROUP BY status"
_SESSIONS_SQL = "SELECT count(*) AS n FROM redraft_sessions WHERE last_accessed > ?"


async def refresh_from_database(db, session_ttl_seconds: float, limit_s: float = 1.0) -> bool:
    """Set the database-wide gauges from ``db`` (``graph.database.Database``: ``fetchall``/``fetchone``), within
    ``limit_s`` seconds; on failure the gauges keep their last values and ``redraft_metrics_database_errors`` counts
    it."""
    try:
        async with asyncio.timeout(limit_s):
            rows = await db.fetchall(_RUNS_SQL)
            sessions = await db.fetchone(_SESSIONS_SQL, (time.time() - session_ttl_seconds,))
    except Exception as exc:  # the scrape still answers with everything else
        DATABASE_SCRAPE_ERRORS.inc()
        log.warning("metrics: could not read the database-wide gauges (%s)", type(exc).__name__)
        return False
    counts = {row["status"]: int(row["n"]) for row in rows}
    RUNS_ACTIVE.set(counts.get("running", 0))
    RUN_QUEUE_DEPTH.set(counts.get("queued", 0))
    SESSIONS_ACTIVE.set(int((sessions or {}).get("n") or 0))
    return True


def exposition() -> tuple[bytes, str]:
    """The text exposition of every registered metric (redraft's, the process collector's, and any library's that
    registers in prometheus-client's default registry) and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
