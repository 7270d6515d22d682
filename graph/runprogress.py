"""A background run's progress while it steps: after each committed step its record (steps, loop, similarity,
checkpoints, phase) and a bus event; within a step, "tokens so far" events; and the run's cancel or stop request,
honoured at the step boundary."""

from __future__ import annotations

import time
from typing import Any

from redraft.graph.bus import Bus
from redraft.graph.runner import Runner
from redraft.graph.runs import CANCEL_NOW, STOP_AT_BOUNDARY, RunStore

TOKEN_EVENT_INTERVAL = 0.25  # seconds between "tokens so far" events within a step


class StopAtBoundary(Exception):
    """A newer run asked this one to stop at its next step boundary (multitask_strategy="interrupt")."""


class CancelledAtBoundary(Exception):
    """The run was cancelled and this worker noticed at a step boundary (a backstop to the task cancellation)."""


# the id of a thread's newest checkpoint ("" if none), read without loading the checkpoint; one parameter, the thread
HEAD_SQL = (
    "SELECT checkpoint_id FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = '' "
    "ORDER BY checkpoint_id DESC LIMIT 1"
)


def local_head(runner: Runner, thread_id: str) -> str | None:
    """The thread's head checkpoint id when the checkpoints live in this process (the memory saver), else None (a
    statement reads it: ``HEAD_SQL``, or inside the claim that needs it)."""
    persistence = runner.persistence
    if persistence.kind == "memory":
        return max(persistence.saver.storage.get(thread_id, {}).get("", {}) or [""])
    return None


async def head_checkpoint_id(runner: Runner, thread_id: str) -> str:
    """The id of the thread's newest checkpoint ("" if none), read without loading the checkpoint."""
    head = local_head(runner, thread_id)
    if head is not None:
        return head
    row = await runner.persistence.db.fetchone(HEAD_SQL, (thread_id,))
    return row["checkpoint_id"] if row else ""


def _phase_after(node: str | None, update: Any) -> str | None:
    """The thread's phase after a step of ``node`` wrote ``update`` (no state read needed)."""
    closed = isinstance(update, dict) and bool(update.get("outcomes"))
    return {
        "draft": "ready_to_critique",
        "critique": "done" if closed else "needs_revision",
        "revise": "done" if closed else "ready_to_critique",
    }.get(node or "")


class Progress:
    """The run's step and token callbacks: record progress, publish it, and honour a cancel or stop request."""

    def __init__(self, runner: Runner, store: RunStore, bus: Bus, run_id: str, thread_id: str, run: dict) -> None:
        self.runner, self.store, self.bus = runner, store, bus
        self.run_id, self.thread_id = run_id, thread_id
        self.steps = run.get("steps") or 0
        self.loop = run.get("loop") or 0
        self.tokens = run.get("tokens") or 0
        self.first = run.get("first_checkpoint")
        self.last_event = 0.0
        self.phase: str | None = None

    async def step(self, event: dict) -> None:
        """After each committed step: record loop, similarity, checkpoint; publish; stop if asked to."""
        node, update = event.get("node"), event.get("update") or {}
        self.steps += 1
        if node == "revise":
            self.loop += 1
        similarity = None
        for score in (update.get("scores") or []) if isinstance(update, dict) else []:
            if isinstance(score, dict) and score.get("similarity") is not None:
                similarity = float(score["similarity"])
        head = await head_checkpoint_id(self.runner, self.thread_id)
        self.first = self.first or head
        self.phase = _phase_after(node, update)
        total = event.get("total")
        message = f"step {self.steps}{f'/{total}' if total else ''}: {node} done"
        fields: dict[str, Any] = {
            "steps": self.steps,
            "loop": self.loop,
            "tokens": self.tokens,
            "last_checkpoint": head,
            "first_checkpoint": self.first,
            "progress_message": message,
            "phase": self.phase,
        }
        if similarity is not None:
            fields["last_similarity"] = similarity
        cancel = await self.store.progress(self.run_id, **fields)
        await self.bus.publish(
            self.run_id,
            {
                "type": "step",
                "node": node,
                "steps": self.steps,
                "total": total,
                "loop": self.loop,
                "similarity": similarity,
                "tokens": self.tokens,
                "phase": self.phase,
                "checkpoint_id": head,
                "message": message,
            },
        )
        if cancel == CANCEL_NOW:
            raise CancelledAtBoundary()
        if cancel == STOP_AT_BOUNDARY:
            raise StopAtBoundary()

    async def token(self, node: str, content: Any) -> None:
        """Within a step: count streamed chunks and publish "tokens so far" a few times a second."""
        self.tokens += 1
        now = time.monotonic()
        if now - self.last_event >= TOKEN_EVENT_INTERVAL:
            self.last_event = now
            await self.bus.publish(
                self.run_id,
                {
                    "type": "tokens",
                    "node": node,
                    "tokens": self.tokens,
                    "phase": self.phase,
                    "message": f"{node}: {self.tokens} tokens so far",
                },
            )
