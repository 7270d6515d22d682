"""Builds the graph: draft -> critique -> revise -> (critique | END), and critique -> END when the critic is done (and
draft -> END when the draft used the run's budget: graph/budget.py).

The convergence decision is made inside the node that produced the evidence (the critique or the revision) and
written in the same superstep, so a stop is never lost between two checkpoints and no extra node (or checkpoint)
is spent on it. Each node runs in ``observed_node``: its step's metrics, span and log context (redraft/observability),
and in ``metered``: its model calls' tokens and cost logged, the run's budget enforced (graph/budget.py).
"""

from __future__ import annotations

from collections.abc import Callable

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from redraft.graph.budget import metered
from redraft.graph.public import QueryInput, QueryOutput, QueryState, after_open, open_query, publish, shown_errors
from redraft.graph.state import RedraftState, outcome_for
from redraft.nodes.context import PublicContext, RedraftContext
from redraft.nodes.critique import critique
from redraft.nodes.draft import draft
from redraft.nodes.revise import revise
from redraft.observability.steps import observed_node


def _slot_done(state: RedraftState) -> bool:
    run_log = state.get("run_log") or []
    return bool(run_log) and outcome_for(state, len(run_log) - 1) is not None


# Routers are coroutines on purpose: LangGraph runs a plain function router in the default thread pool, a thread hop
# per step that costs time alone and queues behind a handful of worker threads under many concurrent runs.
async def after_draft(state: RedraftState) -> str:
    return END if _slot_done(state) else "critique"  # a draft that used the run's budget ends the query


async def after_critique(state: RedraftState) -> str:
    return END if _slot_done(state) else "revise"


async def after_revise(state: RedraftState) -> str:
    return END if _slot_done(state) else "critique"


def _add_loop(builder: StateGraph, done: str, wrap: Callable = lambda node: node) -> None:
    """draft -> critique -> revise -> (critique | ``done``), and critique (or a draft over budget) -> ``done``."""
    builder.add_node("draft", wrap(observed_node("draft", metered("draft", draft))))
    builder.add_node("critique", wrap(observed_node("critique", metered("critique", critique))))
    builder.add_node("revise", wrap(observed_node("revise", metered("revise", revise))))
    builder.add_conditional_edges("draft", after_draft, {"critique": "critique", END: done})
    builder.add_conditional_edges("critique", after_critique, {"revise": "revise", END: done})
    builder.add_conditional_edges("revise", after_revise, {"critique": "critique", END: done})


def build_graph(checkpointer: BaseCheckpointSaver | None = None) -> CompiledStateGraph:
    """The graph redraft's MCP server and CLI run: its input is the run_log open event (``Runner.open_input``), its
    context a ``RedraftContext``."""
    builder = StateGraph(RedraftState, context_schema=RedraftContext)
    _add_loop(builder, END)
    builder.add_edge(START, "draft")
    return builder.compile(checkpointer=checkpointer, name="redraft")


def build_public_graph(checkpointer: BaseCheckpointSaver | None = None) -> CompiledStateGraph:
    """The same loop with public input, output and context schemas (LangGraph Studio, Agent Server; see
    ``graph/public.py``): ``open_query`` turns the typed query into the open event, ``publish`` writes the answer."""
    builder = StateGraph(RedraftState, context_schema=PublicContext, input_schema=QueryInput, output_schema=QueryOutput)
    builder.add_node("open_query", shown_errors(open_query), input_schema=QueryState)
    builder.add_node("publish", shown_errors(publish))
    _add_loop(builder, "publish", shown_errors)
    builder.add_edge(START, "open_query")
    builder.add_conditional_edges("open_query", after_open, ["draft", "critique", "revise"])
    builder.add_edge("publish", END)
    return builder.compile(checkpointer=checkpointer, name="redraft")
