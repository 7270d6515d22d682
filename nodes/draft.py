"""The draft node: first version of the current slot's answer."""

from __future__ import annotations

from langgraph.runtime import Runtime

from redraft.errors import PhaseError
from redraft.graph.state import RedraftState, event, phase_of
from redraft.nodes.context import context_of
from redraft.nodes.model import truncation_update
from redraft.nodes.windows import draft_messages


async def draft(state: RedraftState, runtime: Runtime) -> dict:
    ctx = context_of(runtime)
    if phase_of(state) != "needs_draft":
        raise PhaseError(f"Nothing to draft: the current query is in phase {phase_of(state)!r}.")
    slot = state["run_log"][-1]
    run_config = state["run_config"]
    companion = ctx.companion(run_config["companion"])
    messages = draft_messages(companion.prompts, slot["query"], state.get("history") or [], run_config["clear_history"])
    index = len(state["run_log"]) - 1
    hint = "start the query again with a shorter text (in a new session, or under another companion)"
    reply = await ctx.models.complete(slot["sampling"], messages, "draft", overflow_hint=hint)
    return {"run_log": [event("draft", index, text=reply.text)], **truncation_update(reply, index, "draft")}
