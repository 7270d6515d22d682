"""The critique node: reviews the draft and the last two revisions, or ends the loop if the critic is satisfied."""

from __future__ import annotations

from langgraph.runtime import Runtime

from redraft.errors import PhaseError
from redraft.graph.convergence import best_version, critic_is_satisfied
from redraft.graph.state import RedraftState, current_text, event, phase_of, scores_for, versions
from redraft.nodes.context import context_of
from redraft.nodes.gate import gate
from redraft.nodes.model import Reply, truncation_update
from redraft.nodes.windows import critique_messages


def finish(state: RedraftState, stop_reason: str, scores: list[float], note: str | None = None) -> dict:
    """The updates that close the current slot: its outcome and its query/answer pair for later drafts."""
    index = len(state["run_log"]) - 1
    slot = state["run_log"][index]
    vs = versions(slot)
    best = best_version(scores, len(vs), stop_reason)
    outcome = {
        "slot": index,
        "stop_reason": stop_reason,
        "best": best,
        "iterations": len(slot["revision"]),
        "similarity": scores[-1] if scores else None,
    }
    if note is not None:
        outcome["note"] = note
    return {"outcomes": [outcome], "history": [{"slot": index, "query": slot["query"], "answer": vs[best]}]}


async def critique(state: RedraftState, runtime: Runtime) -> dict:
    ctx = context_of(runtime, state)
    if phase_of(state) != "ready_to_critique":
        raise PhaseError(f"Nothing to critique: the current query is in phase {phase_of(state)!r}.")
    index = len(state["run_log"]) - 1
    slot = state["run_log"][index]
    decision = gate(
        ctx,
        "critique",
        {"slot": index, "round": len(slot["critique"]) + 1, "text": current_text(slot)},
    )
    n = len(slot["critique"]) + 1
    if decision["action"] == "replace":
        reply = Reply(decision["text"].strip())
    else:
        companion = ctx.companion(state["run_config"]["companion"])
        shorter = "fork from this checkpoint with a shorter revision" if slot["revision"] else "start the query again"
        hint = f"pass your own critique (critique with a text), or {shorter}"
        reply = await ctx.models.complete(
            slot["sampling"], critique_messages(companion.prompts, slot), "critique", overflow_hint=hint
        )
    noted = truncation_update(reply, index, "critique", n)
    if critic_is_satisfied(reply.text):
        return {**finish(state, "critic_satisfied", scores_for(state, index), note=reply.text), **noted}
    return {"run_log": [event("critique", index, n, text=reply.text)], **noted}
