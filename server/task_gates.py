"""Step-mode gates of MCP background tasks: a gate asked as a form elicitation (``input_required``) keyed by gate,
slot and round, so an answer can only ever decide the gate it was asked for; and ``resume`` answering a run parked at a
gate, whether a task waits on it (the answer goes to its open ask) or not (the run continues here)."""

from __future__ import annotations

import asyncio
from typing import Any

import mcp_types

from redraft.graph.runexec import execute_run
from redraft.graph.runs import ACTIVE, FINISHED
from redraft.nodes.gate import ACTIONS

WAIT_POLL_S = 0.1


# --- gates as input_required ----------------------------------------------------------------------------------------


def gate_key(gate: dict) -> str:
    """The input request key of one gate: an answer can only decide the gate it was asked for."""
    return f"{gate['gate']}-{gate['slot']}-{gate['round']}"


def ask(gate: dict, problem: str | None = None) -> mcp_types.InputRequiredResult:
    """The step-mode gate as a form elicitation: the action (the gate's choices) and its text."""
    name = gate["gate"]
    properties: dict[str, Any] = {
        "action": {
            "type": "string",
            "enum": list(ACTIONS[name]),
            "description": "approve: let the model "
            + ("critique" if name == "critique" else "revise")
            + "; replace: supply the text yourself"
            + ("; edit: correct the pending critique, then let the model revise" if name == "revise" else ""),
        },
        "text": {"type": "string", "description": f"replace: your {'critique' if name == 'critique' else 'revision'}"},
    }
    if name == "revise":
        properties["critique"] = {"type": "string", "description": "edit: the corrected critique"}
    about = gate.get("text") if name == "critique" else gate.get("critique")
    message = (
        f"Step-mode gate before {name} (query {gate['slot']}, round {gate['round']}). "
        + (f"It works on: {about[:500]}" if about else "")
    ).strip()
    if problem:
        message = f"invalid_input: {problem} -- {message}"
    request = mcp_types.ElicitRequest(
        params=mcp_types.ElicitRequestFormParams(
            message=message,
            requested_schema={"type": "object", "properties": properties, "required": ["action"]},
        )
    )
    return mcp_types.InputRequiredResult(input_requests={gate_key(gate): request})


def answer_to(gate: dict, responses: Any) -> mcp_types.ElicitResult | None:
    answer = (responses or {}).get(gate_key(gate))
    return answer if isinstance(answer, mcp_types.ElicitResult) else None


def checked_answer(app, gate: dict, content: dict) -> dict:
    """The decision an elicitation answer carries, held to resume's rules (valid action, texts within limits)."""
    decision = {k: content[k] for k in ("action", "text", "critique") if isinstance(content.get(k), str)}
    return app.runner._checked_decision(gate["gate"], decision)


# --- resume: answering a run parked at a gate -----------------------------------------------------------------------


async def parked_run(app, thread: str) -> dict | None:
    """The thread's newest run that stopped at a gate and still waits for its decision, if any."""
    row = await app.runs.db.fetchone(
        "SELECT run_id FROM redraft_runs WHERE thread_id = ? AND status = 'interrupted' "
        "ORDER BY updated_at DESC LIMIT 1",
        (thread,),
    )
    if row is None:
        return None
    run = await app.runs.get(row["run_id"])
    return run if (run.get("result") or {}).get("pending_gate") else None


async def answer_parked(app, server, run: dict, decision: dict | None) -> dict:
    """Resume the run parked at a gate with ``decision`` and wait for its next stop; returns the run's view. A parked
    MCP task gets the decision as its answer (``tasks/update``: its next leg runs, on any replica); a run no task waits
    on is continued here. Either way it is the same run."""
    gate = run["result"]["pending_gate"]
    checked = app.runner._checked_decision(gate["gate"], decision)  # bad input: a clear error, nothing changed
    if (run["request"] or {}).get("task") and await _answer_task(server, run, gate, checked):
        return await _wait_past(app, run)
    return await execute_run(app.runner, app.runs, app.bus, run["run_id"], decision=checked)


async def _answer_task(server, run: dict, gate: dict, decision: dict) -> bool:
    """Deliver ``decision`` to the parked task's open ask; False if the task no longer waits for it."""
    from fastmcp_tasks.context import get_task_scope
    from fastmcp_tasks.handlers import tasks_update
    from fastmcp_tasks.input_store import _read_outstanding_map, load_current_leg
    from mcp.shared.exceptions import MCPError

    docket, scope, task_id = server._docket, get_task_scope(), run["run_id"]
    if docket is None:
        return False
    _, leg = await load_current_leg(docket, scope, task_id)
    asked = await _read_outstanding_map(docket, scope, task_id, leg)  # surfaced key -> our key (gate_key)
    surfaced = [key for key, ours in asked.items() if ours == gate_key(gate)]
    if not surfaced:
        return False
    answer = mcp_types.ElicitResult(action="accept", content=decision)
    try:
        await tasks_update(server, task_id, {surfaced[0]: answer.model_dump(by_alias=True, exclude_none=True)})
    except MCPError:
        return False
    return True


async def _wait_past(app, run: dict) -> dict:
    """Wait until the run has been picked up again (attempts grew) and stopped; its view."""
    from redraft.graph.runexec import run_view

    while True:
        current = await app.runs.get(run["run_id"])
        if current["status"] in FINISHED or (current["attempts"] > run["attempts"] and current["status"] not in ACTIVE):
            return run_view(current)
        await asyncio.sleep(WAIT_POLL_S)
