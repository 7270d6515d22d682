"""The revise node: applies the latest critique to the current text, scores it and decides whether to stop."""

from __future__ import annotations

from langgraph.runtime import Runtime

from redraft.errors import PhaseError
from redraft.graph.convergence import decide_after_revision, similarity
from redraft.graph.state import RedraftState, apply_run_log_events, current_text, event, phase_of, scores_for
from redraft.nodes.context import context_of
from redraft.nodes.critique import finish
from redraft.nodes.gate import gate
from redraft.nodes.model import complete
from redraft.nodes.windows import revise_messages


async def revise(state: RedraftState, runtime: Runtime) -> dict:
    ctx = context_of(runtime)
    if phase_of(state) != "needs_revision":
        raise PhaseError(f"Nothing to revise: the current query is in phase {phase_of(state)!r}.")
    index = len(state["run_log"]) - 1
    slot = state["run_log"][index]
    decision = gate(
        ctx.stepwise,
        "revise",
        {"slot": index, "round": len(slot["revision"]) + 1, "critique": slot["critique"][-1]},
    )
    events: list[dict] = []
    if decision["action"] == "edit":
        events.append(event("edit_critique", index, len(slot["critique"]), text=decision["critique"].strip()))
        slot = apply_run_log_events(state["run_log"], [events])[-1]
    previous = current_text(slot)
    if decision["action"] == "replace":
        text = decision["text"].strip()
    else:
        companion = ctx.companion(state["run_config"]["companion"])
        messages = revise_messages(companion.prompts, slot, slot["critique"][-1])
        text = await complete(ctx.models.get(slot["sampling"]), messages, "revision")
    events.append(event("revision", index, len(slot["revision"]) + 1, text=text))

    score = similarity(previous, text)
    iteration = len(slot["revision"]) + 1
    scores = [*scores_for(state, index), score]
    update: dict = {"run_log": events, "scores": [{"slot": index, "iteration": iteration, "similarity": score}]}
    run_config = state["run_config"]
    stop = decide_after_revision(scores, iteration, run_config["similarity_threshold"], run_config["max_loops"])
    if stop:
        after = {**state, "run_log": apply_run_log_events(state["run_log"], [events])}
        update.update(finish(after, stop, scores))
    return update
