"""The revise node: applies the latest critique to the current text, scores it and decides whether to stop."""

from __future__ import annotations

from langgraph.runtime import Runtime

from redraft.errors import PhaseError
from redraft.graph.convergence import decide_after_revision
from redraft.graph.state import (
    RedraftState,
    apply_run_log_events,
    current_text,
    event,
    phase_of,
    revision_event,
    scores_for,
)
from redraft.nodes.context import context_of
from redraft.nodes.critique import finish
from redraft.nodes.embeddings import similarity_of
from redraft.nodes.gate import gate
from redraft.nodes.model import Reply, truncation_update
from redraft.nodes.windows import revise_messages


async def revise(state: RedraftState, runtime: Runtime) -> dict:
    ctx = context_of(runtime, state)
    if phase_of(state) != "needs_revision":
        raise PhaseError(f"Nothing to revise: the current query is in phase {phase_of(state)!r}.")
    index = len(state["run_log"]) - 1
    slot = state["run_log"][index]
    decision = gate(
        ctx,
        "revise",
        {"slot": index, "round": len(slot["revision"]) + 1, "critique": slot["critique"][-1]},
    )
    events: list[dict] = []
    if decision["action"] == "edit":
        events.append(event("edit_critique", index, len(slot["critique"]), text=decision["critique"].strip()))
        slot = apply_run_log_events(state["run_log"], [events])[-1]
    previous = current_text(slot)
    iteration = len(slot["revision"]) + 1
    if decision["action"] == "replace":
        reply = Reply(decision["text"].strip())
    else:
        companion = ctx.companion(state["run_config"]["companion"])
        messages = revise_messages(companion.prompts, slot, slot["critique"][-1])
        hint = "pass your own revision (revise with a text), or fork from this checkpoint with a shorter critique"
        reply = await ctx.models.complete(slot["sampling"], messages, "revision", overflow_hint=hint)
    text = reply.text
    # a patch against the previous version when it pays; releases before the compact layout read only whole texts
    events.append(revision_event(index, iteration, text, previous, patch=ctx.settings.db_compact_layout))

    # text similarity scores big texts off the event loop; embedding similarity falls back to it (and says so)
    score, method = await similarity_of(ctx.settings, previous, text)
    scores = [*scores_for(state, index), score]
    update: dict = {
        "run_log": events,
        "scores": [{"slot": index, "iteration": iteration, "similarity": score, **method}],
        **truncation_update(reply, index, "revise", iteration),
    }
    run_config = state["run_config"]
    stop = decide_after_revision(scores, iteration, run_config["similarity_threshold"], run_config["max_loops"])
    if stop:
        after = {**state, "run_log": apply_run_log_events(state["run_log"], [events])}
        update.update(finish(after, stop, scores))
    return update
