"""Baselines measured in the same run as redraft:

* ``raw_loop``: the smallest draft -> critique -> revise LangGraph loop (plain list state, no phases, leases,
  similarity or time travel bookkeeping) on the same saver and durability;
* ``stock_postgres``: LangGraph's own ``AsyncPostgresSaver`` as people deploy it (a psycopg pool, autocommit,
  ``prepare_threshold=0``, dict rows), the anchor every figure in the issue's table is a ratio against;
* ``plain_graph``: redraft's own nodes over a state whose append-only logs use plain list reducers instead of
  DeltaChannel, to show what the delta channels save in storage.
"""

from __future__ import annotations

import contextlib
import operator
from typing import Annotated, Any, TypedDict

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.graph import END, START, StateGraph

from redraft.graph.builder import after_critique, after_revise
from redraft.graph.state import apply_run_log_events, extend
from redraft.nodes.context import RedraftContext
from redraft.nodes.critique import critique
from redraft.nodes.draft import draft
from redraft.nodes.prompts import GENERIC
from redraft.nodes.revise import revise


class RawState(TypedDict):
    query: str
    texts: Annotated[list[str], operator.add]
    critiques: Annotated[list[str], operator.add]


@contextlib.asynccontextmanager
async def stock_postgres(url: str, max_size: int = 40):
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
    async with AsyncConnectionPool(url, min_size=2, max_size=max_size, kwargs=kwargs, open=False) as pool:
        saver = AsyncPostgresSaver(pool)
        await saver.setup()
        yield saver


def raw_loop(model, loops: int, checkpointer, *, stepwise: bool = False):
    async def draft_node(s: RawState) -> dict:
        reply = await model.ainvoke([SystemMessage(GENERIC.draft_system), HumanMessage(s["query"])])
        return {"texts": [reply.content]}

    async def critique_node(s: RawState) -> dict:
        body = f"Request:\n{s['query']}\n\nOriginal draft:\n{s['texts'][-1]}\n\nReview round {len(s['critiques']) + 1}."
        reply = await model.ainvoke([SystemMessage(GENERIC.critique_system), HumanMessage(body)])
        return {"critiques": [reply.content]}

    async def revise_node(s: RawState) -> dict:
        body = f"Request:\n{s['query']}\n\nCurrent text:\n{s['texts'][-1]}\n\nCritique:\n{s['critiques'][-1]}"
        reply = await model.ainvoke([SystemMessage(GENERIC.revise_system), HumanMessage(body)])
        return {"texts": [reply.content]}

    builder = StateGraph(RawState)
    builder.add_node("draft", draft_node)
    builder.add_node("critique", critique_node)
    builder.add_node("revise", revise_node)
    builder.add_edge(START, "draft")
    builder.add_edge("draft", "critique")
    builder.add_edge("critique", "revise")

    async def route(s: RawState) -> str:  # a coroutine, like redraft's routers: no thread hop per step
        return "critique" if len(s["texts"]) <= loops else END

    builder.add_conditional_edges("revise", route)
    # stepwise: each ainvoke runs one node and stops (a raw LangGraph step, for the MCP anchor)
    return builder.compile(
        checkpointer=checkpointer, interrupt_after=["draft", "critique", "revise"] if stepwise else None
    )


def _plain(reducer):
    return lambda current, update: reducer(current, [update])


class PlainState(TypedDict, total=False):
    run_log: Annotated[list, _plain(apply_run_log_events)]
    scores: Annotated[list, _plain(extend)]
    outcomes: Annotated[list, _plain(extend)]
    history: Annotated[list, _plain(extend)]
    run_config: dict[str, Any]


def plain_graph(checkpointer):
    builder = StateGraph(PlainState, context_schema=RedraftContext)
    builder.add_node("draft", draft, input_schema=PlainState)
    builder.add_node("critique", critique, input_schema=PlainState)
    builder.add_node("revise", revise, input_schema=PlainState)
    builder.add_edge(START, "draft")
    builder.add_edge("draft", "critique")
    # unannotated wrappers: LangGraph would read redraft's routers' `RedraftState` annotation as their input schema

    async def route_critique(state):
        return await after_critique(state)

    async def route_revise(state):
        return await after_revise(state)

    builder.add_conditional_edges("critique", route_critique, ["revise", END])
    builder.add_conditional_edges("revise", route_revise, ["critique", END])
    return builder.compile(checkpointer=checkpointer)
