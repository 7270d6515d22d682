"""The graph's public face for LangGraph Studio and Agent Server: what a person types, and what they read back.

The input is a query and, optionally, its companion, ``max_loops``, ``similarity_threshold``, ``min_score`` and
``mode``. The ``open_query`` node checks it exactly as redraft's own tools do (``graph/opening.py``) and opens a
run_log slot; the draft -> critique -> revise loop that follows is the one redraft's MCP server runs. When the query
is finished, ``publish`` writes the output: the best version as ``answer``, ``stop_reason``, ``iterations`` and
``similarities``, beside the ``run_log`` itself.

The input fields are ``EphemeralValue`` channels: they live for the one step that reads them, so a later query on the
thread never inherits an earlier query's ``max_loops``, and the state view is not cluttered with them. The output
fields are plain channels that ``open_query`` resets, so a thread never shows the previous query's answer as this
one's. The internal channels (``graph/state.py``) are untouched.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal, Required

from langgraph.channels.ephemeral_value import EphemeralValue
from langgraph.runtime import Runtime
from langgraph.types import interrupt
from pydantic import Field
from typing_extensions import TypedDict

from redraft.errors import RedraftError, shown_by_agent_server
from redraft.graph.companions import COMPANION_MAP
from redraft.graph.convergence import STOP_REASONS
from redraft.graph.opening import MAX_LOOPS, may_start, open_input
from redraft.graph.state import RedraftState, Slot, outcome_for, phase_of, scores_for, versions
from redraft.nodes.context import RedraftContext, context_of, public_context

CompanionName = Literal[tuple(COMPANION_MAP)]  # type: ignore[valid-type]
StopReason = Literal[STOP_REASONS]  # type: ignore[valid-type]


class QueryInput(TypedDict, total=False):
    """Start a query on the thread. A later query on the same thread sees the earlier answers (unless its companion
    starts fresh)."""

    query: Required[Annotated[str, EphemeralValue, Field(description="The question or task to answer.", min_length=1)]]
    companion: Annotated[
        CompanionName,
        EphemeralValue,
        Field(
            description=(
                "generic (default), code (strict reviewer), essay (writing critic; each query starts fresh) or "
                "summary (faithful summaries, reviewed step by step)."
            )
        ),
    ]
    max_loops: Annotated[
        int,
        EphemeralValue,
        Field(ge=1, le=MAX_LOOPS, description="Most revisions before stopping (default: the companion's)."),
    ]
    similarity_threshold: Annotated[
        float,
        EphemeralValue,
        Field(
            ge=0.0,
            le=1.0,
            description="Stop once a revision is at least this similar to the one before (default: the companion's).",
        ),
    ]
    min_score: Annotated[
        float,
        EphemeralValue,
        Field(
            ge=0.0,
            le=10.0,
            description="Stop once the critic scores a version at least this, 0-10 (default: off).",
        ),
    ]
    mode: Annotated[
        Literal["auto", "step"],
        EphemeralValue,
        Field(description="step: pause before every critique and revision (default: the companion's mode)."),
    ]


class QueryOutput(TypedDict, total=False):
    """The finished query: its best version and how the loop ended, beside the thread's run_log."""

    answer: Annotated[str | None, Field(description="The best version of the answer (the draft or a revision).")]
    stop_reason: Annotated[
        StopReason | None, Field(description="critic_satisfied, min_score, converged or max_loops; null while running.")
    ]
    iterations: Annotated[int, Field(description="Revisions made.")]
    similarities: Annotated[
        list[float], Field(description="Similarity of each revision to the version before it (0 to 1).")
    ]
    run_log: Annotated[
        list[Slot], Field(description="One slot per query on the thread: query, draft, critiques and revisions.")
    ]


class QueryState(RedraftState, QueryInput, total=False):
    """What ``open_query`` reads: the thread's state and the run's input."""


_CLEARED = {"answer": None, "stop_reason": None, "iterations": 0, "similarities": []}
_FINISH_HINT = "answer its interrupt or let its run finish (or use a new thread)"
_PENDING_STEP = {"ready_to_critique": "critique", "needs_revision": "revise"}


async def open_query(state: QueryState, runtime: Runtime) -> dict:
    """Check the input and open a run_log slot for it (the same checks as redraft's own tools)."""
    phase = phase_of(state)
    if phase in _PENDING_STEP:
        # The thread is mid-query (paused at a gate, or stopped by an error), so this input cannot start a query. By
        # now LangGraph has put the input in place of the paused step: failing here would leave the thread stuck at
        # an input that always fails. Say so instead, and once resumed go back to the pending step (``after_open``).
        interrupt(
            {
                "error": f"The current query is not finished (phase {phase!r}), so this query was not started. "
                "Resume (with any value) to go back to the current one; start a new query on another thread.",
                "query": state.get("query"),
            }
        )
        return {}
    ctx = context_of(runtime, state)
    sampling = {} if isinstance(runtime.context, RedraftContext) else public_context(runtime.context).sampling()
    companion = ctx.companion(state.get("companion") or ctx.settings.default_companion)
    graph_input = open_input(
        ctx.settings,
        companion,
        state.get("query"),  # type: ignore[arg-type]  # checked by open_input
        sampling,
        state.get("similarity_threshold"),
        state.get("max_loops"),
        state.get("mode"),
        state.get("min_score"),
    )
    if may_start(state, graph_input, "starting another query", _FINISH_HINT):
        return dict(_CLEARED)  # the same query again, whose draft failed: draft it now
    graph_input["run_log"][0]["slot"] = len(state.get("run_log") or [])
    return {**graph_input, **_CLEARED}


async def after_open(state: RedraftState) -> str:
    """draft, or the step a thread that was mid-query goes back to."""
    return _PENDING_STEP.get(phase_of(state), "draft")


async def publish(state: RedraftState, runtime: Runtime) -> dict:
    """The finished query's output."""
    run_log = state.get("run_log") or []
    index = len(run_log) - 1
    outcome = outcome_for(state, index) if run_log else None
    if outcome is None:
        return dict(_CLEARED)
    return {
        "answer": versions(run_log[index])[outcome["best"]],
        "stop_reason": outcome["stop_reason"],
        "iterations": outcome["iterations"],
        "similarities": scores_for(state, index),
    }


def shown_errors(node):
    """``node`` with its redraft errors raised so that Agent Server shows their message (``shown_by_agent_server``)."""

    @functools.wraps(node)
    async def run(state: Any, runtime: Any) -> dict:
        try:
            return await node(state, runtime)
        except RedraftError as exc:
            raise shown_by_agent_server(exc) from None

    return run
