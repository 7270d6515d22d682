"""Background runs: one row per run in ``redraft_runs``, the truth every view reads (a ``run_id`` from
``start_refine`` and an MCP task id name the same row).

Status moves queued -> running -> succeeded | failed | cancelled | interrupted (a step-mode gate, or stopped by a
newer run under ``multitask_strategy="interrupt"``); an interrupted run may run again. Every transition is guarded in
SQL (``WHERE status IN (...)``), so two workers can never both move one run: the one whose UPDATE matched wins.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from redraft.graph.database import Database
from redraft.nodes.gate import ACTIONS

STATUSES = ("queued", "running", "interrupted", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")
KINDS = ("refine", "resume", "replay")
STRATEGIES = ("reject", "enqueue", "interrupt", "rollback")
# cancel_requested: 0 = no, 1 = cancel now (cancel_run, rollback), 2 = stop at the next step boundary (interrupt)
CANCEL_NOW = 1
STOP_AT_BOUNDARY = 2

_JSON_FIELDS = ("request", "result")
_FIELDS = (
    "thread_id",
    "session_id",
    "companion",
    "principal",
    "kind",
    "status",
    "multitask_strategy",
    "request",
    "base_checkpoint",
    "first_checkpoint",
    "last_checkpoint",
    "error_code",
    "error_message",
    "cancel_requested",
    "loop",
    "steps",
    "last_similarity",
    "tokens",
    "progress_message",
    "phase",
    "result",
    "attempts",
    "created_at",
    "started_at",
    "finished_at",
    "updated_at",
    "worker",
)


def new_run_id() -> str:
    """A fresh run id (also usable as a Docket key and an MCP task id)."""
    return str(uuid.uuid4())


def _encode(field: str, value: Any) -> Any:
    return json.dumps(value) if field in _JSON_FIELDS and value is not None else value


def decode_run(row: dict | None) -> dict | None:
    if row is None:
        return None
    out = dict(row)
    for field in _JSON_FIELDS:
        if out.get(field) is not None:
            out[field] = json.loads(out[field])
    return out


class RunStore:
    """The ``redraft_runs`` table. Every method is one statement, so each is atomic on both backends."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(
        self,
        *,
        thread_id: str,
        session_id: str,
        companion: str,
        principal: str,
        kind: str = "refine",
        request: dict | None = None,
        multitask_strategy: str = "reject",
        run_id: str | None = None,
        status: str = "queued",
    ) -> dict:
        """Insert a new run (status ``queued`` unless told) and return it."""
        if kind not in KINDS or multitask_strategy not in STRATEGIES or status not in STATUSES:
            raise ValueError(f"bad run: kind={kind!r} strategy={multitask_strategy!r} status={status!r}")
        now = time.time()
        row = {
            "run_id": run_id or new_run_id(),
            "thread_id": thread_id,
            "session_id": session_id,
            "companion": companion,
            "principal": principal,
            "kind": kind,
            "status": status,
            "multitask_strategy": multitask_strategy,
            "request": request or {},
            "created_at": now,
            "updated_at": now,
        }
        names = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        return decode_run(
            await self.db.fetchone(
                f"INSERT INTO redraft_runs ({names}) VALUES ({marks}) RETURNING *",
                tuple(_encode(k, v) for k, v in row.items()),
            )
        )

    async def get(self, run_id: str) -> dict | None:
        """The run, or None."""
        return decode_run(await self.db.fetchone("SELECT * FROM redraft_runs WHERE run_id = ?", (run_id,)))

    async def update(self, run_id: str, *, expect: tuple[str, ...] | None = None, **fields: Any) -> bool:
        """Set ``fields`` (``updated_at`` too); with ``expect``, only while the run's status is one of them.
        True if the row changed -- the guard that keeps two workers from both moving one run."""
        unknown = set(fields) - set(_FIELDS)
        if unknown:
            raise ValueError(f"unknown run fields: {sorted(unknown)}")
        fields["updated_at"] = time.time()
        sets = ", ".join(f"{k} = ?" for k in fields)
        params: tuple = tuple(_encode(k, v) for k, v in fields.items())
        sql = f"UPDATE redraft_runs SET {sets} WHERE run_id = ?"
        params += (run_id,)
        if expect is not None:
            sql += f" AND status IN ({', '.join('?' for _ in expect)})"
            params += tuple(expect)
        return await self.db.execute(sql, params) == 1

    async def claim(self, run_id: str, worker: str, base_checkpoint: str | None = None) -> dict | None:
        """Move a queued, running (a redelivery) or interrupted run to running for ``worker``, counting the attempt,
        and set its base checkpoint unless one is set already (the first claim's stands). The run afterwards, or None
        if it was in no state to claim (finished, or cancelled meanwhile). One statement."""
        now = time.time()
        return decode_run(
            await self.db.fetchone(
                "UPDATE redraft_runs SET status = 'running', worker = ?, attempts = attempts + 1, "
                "started_at = COALESCE(started_at, ?), finished_at = NULL, updated_at = ?, "
                "base_checkpoint = COALESCE(base_checkpoint, ?) "
                "WHERE run_id = ? AND status IN ('queued', 'running', 'interrupted') RETURNING *",
                (worker, now, now, base_checkpoint, run_id),
            )
        )

    async def claim_noted(
        self, run_id: str, fields: dict, worker: str, base_checkpoint: str | None, head_sql: str = ""
    ) -> dict | None:
        """``claim`` for the first leg of a run noted at MCP task creation: complete the note with ``fields`` and
        claim it for ``worker`` from ``base_checkpoint`` (None: the thread's head, read in the same statement by
        ``head_sql``, which takes the thread id), in one statement, if it is still the untouched note and no other run
        is queued or running on its thread. The run afterwards (running), else None."""
        unknown = set(fields) - set(_FIELDS)
        if unknown:
            raise ValueError(f"unknown run fields: {sorted(unknown)}")
        sets = ", ".join(f"{name} = ?" for name in fields)
        base, base_params = "?", (base_checkpoint,)
        if base_checkpoint is None:
            base, base_params = f"COALESCE(({head_sql}), '')", (fields["thread_id"],)
        now = time.time()
        return decode_run(
            await self.db.fetchone(
                f"UPDATE redraft_runs SET {sets}, status = 'running', worker = ?, attempts = 1, started_at = ?, "
                f"base_checkpoint = {base}, updated_at = ? WHERE run_id = ? AND status = 'queued' AND attempts = 0 "
                "AND NOT EXISTS (SELECT 1 FROM redraft_runs other WHERE other.thread_id = ? "
                "AND other.status IN ('queued', 'running') AND other.run_id <> ?) RETURNING *",
                (
                    *(_encode(k, v) for k, v in fields.items()),
                    worker,
                    now,
                    *base_params,
                    now,
                    run_id,
                    fields["thread_id"],
                    run_id,
                ),
            )
        )

    async def forget_noted(self, run_id: str) -> None:
        """Remove a run noted at MCP task creation that no worker has touched (its task was refused or not enqueued)."""
        await self.db.execute(
            "DELETE FROM redraft_runs WHERE run_id = ? AND status = 'queued' AND attempts = 0", (run_id,)
        )

    async def progress(self, run_id: str, **fields: Any) -> int:
        """Record a running run's progress; returns its ``cancel_requested`` flag (one round trip for both)."""
        fields["updated_at"] = time.time()
        sets = ", ".join(f"{k} = ?" for k in fields)
        row = await self.db.fetchone(
            f"UPDATE redraft_runs SET {sets} WHERE run_id = ? AND status = 'running' RETURNING cancel_requested",
            (*(_encode(k, v) for k, v in fields.items()), run_id),
        )
        return int(row["cancel_requested"]) if row else 0

    async def finish(self, run_id: str, status: str, *, expect: tuple[str, ...] = ACTIVE, **fields: Any) -> bool:
        """Move an unfinished run to ``status`` (a finished one, or ``interrupted``), stamping ``finished_at``."""
        stamp = {"finished_at": time.time()} if status in FINISHED else {}
        return await self.update(run_id, expect=expect, status=status, **stamp, **fields)

    async def active_for_thread(self, thread_id: str) -> list[dict]:
        """The thread's queued and running runs, oldest first."""
        rows = await self.db.fetchall(
            "SELECT * FROM redraft_runs WHERE thread_id = ? AND status IN ('queued', 'running') "
            "ORDER BY created_at, run_id",
            (thread_id,),
        )
        return [decode_run(r) for r in rows]

    async def list_unfinished(self) -> list[dict]:
        """Every queued or running run, oldest first (what a restart re-queues)."""
        rows = await self.db.fetchall(
            "SELECT * FROM redraft_runs WHERE status IN ('queued', 'running') ORDER BY created_at, run_id"
        )
        return [decode_run(r) for r in rows]

    async def request_cancel(self, run_id: str, how: int = CANCEL_NOW) -> dict | None:
        """Flag an unfinished run for cancellation; a run no worker holds (queued, or paused at a gate) is cancelled
        here and now (a worker that claims it afterwards finds it finished). Returns the run afterwards, or None."""
        await self.update(run_id, expect=("queued", "running", "interrupted"), cancel_requested=how)
        if how == CANCEL_NOW:
            await self.finish(
                run_id,
                "cancelled",
                expect=("queued", "interrupted"),
                error_code="cancelled",
                error_message="Cancelled.",
            )
        return await self.get(run_id)

    async def delete_for_threads(self, thread_ids: list[str]) -> int:
        """Forget the runs of deleted threads."""
        count = 0
        for thread_id in thread_ids:
            count += await self.db.execute("DELETE FROM redraft_runs WHERE thread_id = ?", (thread_id,))
        return count


def run_view(run: dict, latest: dict | None = None) -> dict:
    """What run_status, wait_run and the run resource show: status, phase, loop, last similarity, elapsed, tokens,
    error, pending gate, and the result once the run stopped."""
    now = time.time()
    started = run.get("started_at")
    end = run.get("finished_at") or now
    result = run.get("result")
    tokens = run.get("tokens") or 0
    if latest and latest.get("tokens") is not None and run["status"] == "running":
        tokens = max(tokens, int(latest["tokens"]))
    return {
        "run_id": run["run_id"],
        "status": run["status"],
        "kind": run["kind"],
        "session_id": run["session_id"],
        "companion": run["companion"],
        "multitask_strategy": run["multitask_strategy"],
        "phase": ((latest or {}).get("phase") if run["status"] == "running" else None) or run.get("phase"),
        "loop": run.get("loop") or 0,
        "steps": run.get("steps") or 0,
        "last_similarity": run.get("last_similarity"),
        "tokens": tokens,
        "elapsed_s": round(end - started, 3) if started else 0.0,
        "queued_s": round((started or now) - run["created_at"], 3),
        "progress": (latest or {}).get("message") or run.get("progress_message"),
        "first_checkpoint": run.get("first_checkpoint"),
        "last_checkpoint": run.get("last_checkpoint"),
        "error": {"code": run["error_code"], "message": run.get("error_message")} if run.get("error_code") else None,
        "pending_gate": _with_choices((result or {}).get("pending_gate")) if run["status"] == "interrupted" else None,
        "result": result if run["status"] in ("succeeded", "interrupted") else None,
        "attempts": run.get("attempts") or 0,
        "worker": run.get("worker"),
    }


def _with_choices(gate: dict | None) -> dict | None:
    """A pending gate with the decisions it takes (resume's ``decision.action``)."""
    if not gate:
        return None
    return {**gate, "choices": list(ACTIONS.get(gate.get("gate"), ()))}
