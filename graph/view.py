"""A thread's JSON view at a checkpoint (phase, current slot, similarities, stop reason, best text, pending gate),
shared by the runner, time travel and background runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from langgraph.types import StateSnapshot

from redraft.graph.convergence import critic_scores_for, report
from redraft.graph.state import check_invariants, outcome_for, phase_of, scores_for, versions
from redraft.nodes.usage import summary as usage_summary


@dataclass(frozen=True)
class RunEnd:
    """Where a run stopped, taken from its own stream (the last checkpoint event and any interrupt), so the result
    view costs no second read of the thread. Duck-types the parts of ``StateSnapshot`` that ``describe`` uses."""

    values: dict
    next: tuple
    config: dict
    interrupts: tuple


def pending_gate(snapshot: StateSnapshot | RunEnd) -> dict | None:
    """The step-mode gate the thread is paused at. A task that already finished (its result saved before a crash, not
    yet checkpointed) waits for nothing, even if it paused at its gate on an earlier attempt."""
    tasks = getattr(snapshot, "tasks", None)
    if tasks:
        items: Any = [item for task in tasks if task.result is None for item in task.interrupts]
    else:
        items = snapshot.interrupts or ()
    for item in items:
        if isinstance(item.value, dict) and "gate" in item.value:
            return item.value
    return None


def describe(thread_id: str, snap: StateSnapshot | RunEnd) -> dict:
    """A JSON view of a thread at a checkpoint: phase, current slot, similarities, stop reason, best text."""
    state = snap.values or {}
    check_invariants(state)
    run_log = state.get("run_log") or []
    index = len(run_log) - 1
    slot = run_log[index] if run_log else None
    outcome = outcome_for(state, index) if slot else None
    vs = versions(slot) if slot else []
    scores = scores_for(state, index) if slot else []
    run_config = state.get("run_config") or {}
    return {
        "thread_id": thread_id,
        "checkpoint_id": (snap.config or {}).get("configurable", {}).get("checkpoint_id"),
        "phase": phase_of(state),
        "slot_index": index if slot else None,
        "slots": len(run_log),
        "slot": slot,
        "similarities": scores,
        # the scores stored when each revision was made (same function as the convergence resource recomputes)
        # and the critic's score of each version beside them (structured critiques: nodes/scoring.py)
        "convergence": report(
            scores,
            len(vs),
            run_config.get("similarity_threshold", 1.0),
            critic_scores_for(state, index),
            run_config.get("min_score"),
        )
        if vs
        else None,
        "stop_reason": outcome["stop_reason"] if outcome else None,
        "best_version": outcome["best"] if outcome else None,
        "final_text": vs[outcome["best"]] if outcome else None,
        "run_config": run_config,
        "next": list(snap.next or ()),
        "pending_gate": pending_gate(snap),
        # replies of this query's steps that the model cut at max_tokens (REDRAFT_ON_TRUNCATION says what was done)
        "truncations": [t for t in state.get("truncations") or [] if slot and t["slot"] == index],
        # tokens and cost: the last step's, the last run's, this query's and the thread's, and this query's calls
        "usage": usage_summary(state.get("usage") or [], index if slot else None),
    }
