"""The human-in-the-loop gate at the start of critique and revise.

When the invocation is stepwise, the node first calls LangGraph's ``interrupt`` with a description of what it is
about to do. The client resumes with ``Command(resume=decision)``:

* before a critique: ``{"action": "approve"}`` (let the model critique) or ``{"action": "replace", "text": ...}``;
* before a revision: ``approve``, ``{"action": "edit", "critique": ...}`` (fix the pending critique, then revise),
  or ``{"action": "replace", "text": ...}`` (supply the revision itself).

The gate runs before any side effect, so LangGraph re-running the node on resume repeats nothing.
"""

from __future__ import annotations

from typing import Any

from langgraph.types import interrupt

from redraft.errors import InvalidInputError

ACTIONS = {"critique": ("approve", "replace"), "revise": ("approve", "edit", "replace")}


def validate_decision(gate: str, decision: Any) -> dict:
    if decision is None:
        return {"action": "approve"}
    if not isinstance(decision, dict) or decision.get("action") not in ACTIONS[gate]:
        raise InvalidInputError(f"A {gate} decision must be one of: {', '.join(ACTIONS[gate])}.")
    action = decision["action"]
    if action == "replace" and not (isinstance(decision.get("text"), str) and decision["text"].strip()):
        raise InvalidInputError("A 'replace' decision needs a non-empty 'text'.")
    if action == "edit" and not (isinstance(decision.get("critique"), str) and decision["critique"].strip()):
        raise InvalidInputError("An 'edit' decision needs a non-empty 'critique'.")
    return decision


def gate(stepwise: bool, gate_name: str, payload: dict) -> dict:
    if not stepwise:
        return {"action": "approve"}
    return validate_decision(gate_name, interrupt({"gate": gate_name, **payload}))
