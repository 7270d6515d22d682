"""The critique node: reviews the draft and the last two revisions, or ends the loop if the critic is satisfied (or
scores the version at least the run's ``min_score``). Structured critiques are read and scored in nodes/scoring.py."""

from __future__ import annotations

from langgraph.runtime import Runtime

from redraft.errors import PhaseError
from redraft.graph.convergence import best_version, critic_scores_for, decide_after_critique
from redraft.graph.state import RedraftState, current_text, event, phase_of, scores_for, versions
from redraft.nodes.context import context_of
from redraft.nodes.gate import gate
from redraft.nodes.model import Reply, truncation_update
from redraft.nodes.prompts import structured
from redraft.nodes.scoring import ask_critic, critique_format, log_fallback, parse, prose, score_entry
from redraft.nodes.windows import critique_messages


def finish(
    state: RedraftState,
    stop_reason: str,
    scores: list[float],
    note: str | None = None,
    critic: dict[int, float | None] | None = None,
) -> dict:
    """The updates that close the current slot: its outcome and its query/answer pair for later drafts. ``critic``:
    the critic's score per version (version -> score) when it scored them; the best version is then the top-scored."""
    index = len(state["run_log"]) - 1
    slot = state["run_log"][index]
    vs = versions(slot)
    critic = critic if critic is not None else critic_scores_for(state, index)
    best = best_version(scores, len(vs), stop_reason, critic)
    outcome = {
        "slot": index,
        "stop_reason": stop_reason,
        "best": best,
        "iterations": len(slot["revision"]),
        "similarity": scores[-1] if scores else None,
    }
    if any(score is not None for score in critic.values()):
        outcome["score"] = critic.get(best)
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
    entries: list[dict] = []
    if decision["action"] == "replace":  # a person's critique: prose, never scored
        reply = Reply(decision["text"].strip())
        review = prose(reply.text)
    else:
        companion = ctx.companion(state["run_config"]["companion"])
        shorter = "fork from this checkpoint with a shorter revision" if slot["revision"] else "start the query again"
        hint = f"pass your own critique (critique with a text), or {shorter}"
        if critique_format(ctx, companion) == "text":
            messages = critique_messages(companion.prompts, slot)
            reply = await ctx.models.complete(slot["sampling"], messages, "critique", overflow_hint=hint)
            review = prose(reply.text)
        else:
            messages = critique_messages(structured(companion.prompts), slot)
            reply, requested = await ask_critic(ctx, slot["sampling"], messages, hint)
            review = parse(reply.text)
            entries.append(score_entry(index, n, review, requested))
            if not review.structured:
                log_fallback(slot["sampling"], index, n, review.note)
    noted = truncation_update(reply, index, "critique", n)
    logged = {"scores": entries} if entries else {}
    critic = {**critic_scores_for(state, index), **{e["iteration"]: e["score"] for e in entries}}
    stop = "critic_satisfied" if review.satisfied else None
    stop = stop or decide_after_critique(
        entries[-1]["score"] if entries else None, state["run_config"].get("min_score")
    )
    if stop:
        return {**finish(state, stop, scores_for(state, index), note=review.text, critic=critic), **noted, **logged}
    return {"run_log": [event("critique", index, n, text=review.text)], **noted, **logged}
