"""The human-in-the-loop gate at the start of critique and revise.

A decision for a gate is one of:

* before a critique: ``{"action": "approve"}`` (let the model critique) or ``{"action": "replace", "text": ...}``;
* before a revision: ``approve``, ``{"action": "edit", "critique": ...}`` (fix the pending critique, then revise),
  or ``{"action": "replace", "text": ...}`` (supply the revision itself).

redraft hands a decision to the node through the run's context (``RedraftContext.answer``), addressed to exactly
one gate: its name, slot and round. It does not use LangGraph's ``Command(resume=...)``: LangGraph saves the first
resume value a task consumed and hands it back to ``interrupt`` on every later attempt, so after a failed attempt
(a model error) a new decision would be silently replaced by the old one. A context answer is never saved, so the
decision a node sees is always the one given for this attempt.

Without an answer, a stepwise run pauses at the gate with LangGraph's ``interrupt`` (describing what the node is
about to do) and an auto run approves. The gate runs before any side effect, so re-running the node repeats nothing.
"""

from __future__ import annotations

from typing import Any

from langgraph.types import interrupt

from redraft.errors import InvalidInputError

ACTIONS = {"critique": ("approve", "replace"), "revise": ("approve", "edit", "replace")}
APPROVE = {"action": "approve"}


def validate_decision(gate: str, decision: Any) -> dict:
    if decision is None:
        return dict(APPROVE)
    if not isinstance(decision, dict) or decision.get("action") not in ACTIONS[gate]:
        raise InvalidInputError(f"A {gate} decision must be one of: {', '.join(ACTIONS[gate])}.")
    action = decision["action"]
    if action == "replace" and not (isinstance(decision.get("text"), str) and decision["text"].strip()):
        raise InvalidInputError("A 'replace' decision needs a non-empty 'text'.")
    if action == "edit" and not (isinstance(decision.get("critique"), str) and decision["critique"].strip()):
        raise InvalidInputError("An 'edit' decision needs a non-empty 'critique'.")
    return decision


def gate_round(gate_name: str, state: dict) -> tuple[int, int]:
    """(slot, round) of the gate ``gate_name`` for the thread's current slot: the numbers the node puts in its
    gate payload."""
    run_log = state.get("run_log") or []
    slot = run_log[-1]
    done = slot["critique"] if gate_name == "critique" else slot["revision"]
    return len(run_log) - 1, len(done) + 1


def answer_for(gate_name: str, state: dict, decision: Any) -> dict:
    """A run-context answer that gives ``decision`` to gate ``gate_name`` at the thread's current slot and round,
    and to no other gate of the run."""
    slot, rnd = gate_round(gate_name, state)
    return {"gate": gate_name, "slot": slot, "round": rnd, "decision": validate_decision(gate_name, decision)}


def gate(ctx: Any, gate_name: str, payload: dict) -> dict:
    """The decision for this gate. ``ctx`` is the node's ``RedraftContext``; ``payload`` names the slot and round."""
    answer = getattr(ctx, "answer", None)
    if answer is not None and (answer["gate"], answer["slot"], answer["round"]) == (
        gate_name,
        payload["slot"],
        payload["round"],
    ):
        return answer["decision"]
    if not ctx.stepwise:
        return dict(APPROVE)
    question = {"gate": gate_name, **payload}
    while True:
        # A resume value LangGraph hands back is the one saved for this interrupt on every later attempt, so a bad one
        # (a LangGraph Studio user's typo) is answered with the same gate again, and its error, never a dead end.
        value = interrupt(question)
        try:
            return validate_decision(gate_name, value)
        except InvalidInputError as exc:
            question = {"gate": gate_name, **payload, "error": exc.message}
