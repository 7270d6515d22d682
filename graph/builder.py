"""Builds the graph: draft -> critique -> revise -> (critique | END), and critique -> END when the critic is done.

The convergence decision is made inside the node that produced the evidence (the critique or the revision) and
written in the same superstep, so a stop is never lost between two checkpoints and no extra node (or checkpoint)
is spent on it.
"""

from __future__ import annotations

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from redraft.graph.state import RedraftState, outcome_for
from redraft.nodes.context import RedraftContext
from redraft.nodes.critique import critique
from redraft.nodes.draft import draft
from redraft.nodes.revise import revise


def _slot_done(state: RedraftState) -> bool:
    run_log = state.get("run_log") or []
    return bool(run_log) and outcome_for(state, len(run_log) - 1) is not None


# Routers are coroutines on purpose: LangGraph runs a plain function router in the default thread pool, a thread hop
# per step that costs time alone and queues behind a handful of worker threads under many concurrent runs.
async def after_critique(state: RedraftState) -> str:
    return END if _slot_done(state) else "revise"


async def after_revise(state: RedraftState) -> str:
    return END if _slot_done(state) else "critique"


def build_graph(checkpointer: BaseCheckpointSaver | None = None) -> CompiledStateGraph:
    builder = StateGraph(RedraftState, context_schema=RedraftContext)
    builder.add_node("draft", draft)
    builder.add_node("critique", critique)
    builder.add_node("revise", revise)
    builder.add_edge(START, "draft")
    builder.add_edge("draft", "critique")
    builder.add_conditional_edges("critique", after_critique, ["revise", END])
    builder.add_conditional_edges("revise", after_revise, ["critique", END])
    return builder.compile(checkpointer=checkpointer, name="redraft")
