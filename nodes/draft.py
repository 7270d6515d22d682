"""The draft node: first version of the current slot's answer."""

from __future__ import annotations

from langgraph.runtime import Runtime

from redraft.errors import PhaseError
from redraft.graph.state import RedraftState, event, phase_of
from redraft.nodes.context import context_of
from redraft.nodes.model import complete
from redraft.nodes.windows import draft_messages


async def draft(state: RedraftState, runtime: Runtime) -> dict:
    ctx = context_of(runtime)
    if phase_of(state) != "needs_draft":
        raise PhaseError(f"Nothing to draft: the current query is in phase {phase_of(state)!r}.")
    slot = state["run_log"][-1]
    run_config = state["run_config"]
    companion = ctx.companion(run_config["companion"])
    messages = draft_messages(companion.prompts, slot["query"], state.get("history") or [], run_config["clear_history"])
    text = await complete(ctx.models.get(slot["sampling"]), messages, "draft")
    return {"run_log": [event("draft", len(state["run_log"]) - 1, text=text)]}
