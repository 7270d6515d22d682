"""The graph input that opens a query on a thread: the query text and its settings, checked.

Shared by redraft's own tools (``Runner.open_input``) and the public graph that LangGraph Studio and Agent Server run
(``graph/public.py``), so a query is held to the same limits whichever way it arrives.
"""

from __future__ import annotations

from redraft.errors import InvalidInputError, PhaseError, RedraftError
from redraft.graph.budget import check_budgets, check_priced
from redraft.graph.companions import Companion
from redraft.graph.state import phase_of
from redraft.nodes.model import effective_sampling
from redraft.settings import Settings

MAX_LOOPS = 1000


def check_text(text: str | None, what: str, limit: int) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError(f"The {what} must be a non-empty string.")
    if len(text) > limit:
        raise InvalidInputError(f"The {what} is {len(text)} characters; the limit is {limit}.")
    if "\x00" in text:
        raise InvalidInputError(f"The {what} contains a NUL character.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"The {what} is not valid Unicode (it contains a lone surrogate).") from None
    return text.strip()


def open_input(
    settings: Settings,
    companion: Companion,
    query: str,
    sampling: dict | None = None,
    similarity_threshold: float | None = None,
    max_loops: int | None = None,
    mode: str | None = None,
    min_score: float | None = None,
    max_tokens_per_run: int | None = None,
    max_cost_per_run: float | None = None,
) -> dict:
    """The graph input ``{"run_log": [open event], "run_config": {...}}``; its event's ``slot`` is filled in by the
    caller once the thread's run_log length is known (under the thread's lease, for redraft's own tools)."""
    query = check_text(query, "query", settings.max_query_chars)
    threshold = companion.similarity_threshold if similarity_threshold is None else similarity_threshold
    loops = companion.max_loops if max_loops is None else max_loops
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise InvalidInputError(f"similarity_threshold must be between 0 and 1, got {threshold!r}.")
    if isinstance(loops, bool) or not isinstance(loops, int) or not 1 <= loops <= MAX_LOOPS:
        raise InvalidInputError(f"max_loops must be an integer from 1 to {MAX_LOOPS}, got {loops!r}.")
    min_score = companion.min_score if min_score is None else min_score
    if min_score is not None and (
        isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or not 0.0 <= min_score <= 10.0
    ):
        raise InvalidInputError(f"min_score must be between 0 and 10, got {min_score!r}.")
    if mode not in (None, "auto", "step"):
        raise InvalidInputError(f"mode must be 'auto' or 'step', got {mode!r}.")
    try:
        effective = effective_sampling(settings, companion, sampling)
    except RedraftError as exc:
        raise InvalidInputError(exc.message) from None
    # budgets (graph/budget.py): the call's, else the settings'
    max_tokens = settings.max_tokens_per_run if max_tokens_per_run is None else max_tokens_per_run
    max_cost = settings.max_cost_per_run if max_cost_per_run is None else max_cost_per_run
    check_budgets(max_tokens, max_cost)
    check_priced(settings, effective, max_cost)
    budgets = {"max_tokens_per_run": max_tokens, "max_cost_per_run": max_cost}
    return {
        "run_log": [{"op": "open", "slot": None, "query": query, "variant": companion.name, "sampling": effective}],
        "run_config": {
            "companion": companion.name,
            "similarity_threshold": float(threshold),
            "max_loops": loops,
            # stop once the critic scores a version at least this (None: off; older checkpoints lack the key)
            "min_score": None if min_score is None else float(min_score),
            "clear_history": companion.clear_history,
            "mode": mode or companion.mode,
            **{k: v for k, v in budgets.items() if v is not None},
        },
    }


def same_query(state: dict, graph_input: dict) -> bool:
    """Whether ``graph_input`` opens exactly the current slot again: same query, companion, sampling and settings."""
    slot, opened = (state.get("run_log") or [None])[-1], graph_input["run_log"][0]
    keys = ("query", "variant", "sampling")
    return (
        slot is not None
        and all(slot[k] == opened[k] for k in keys)
        and state.get("run_config") == graph_input["run_config"]
    )


FINISH_HINT = "finish it with refine or resume (or end the session)"


def may_start(state: dict, graph_input: dict, doing: str, finish_hint: str = FINISH_HINT) -> bool:
    """Whether a new query may start on the thread now; True when it is the current query again, whose draft was never
    written (a failed draft call retried as is). A different query replaces a query whose draft was never written
    (a draft the model refused, say with context_overflow); a query with a draft must be finished first."""
    phase = phase_of(state)
    if phase in ("empty", "done"):
        return False
    if phase == "needs_draft":
        return same_query(state, graph_input)
    raise PhaseError(f"The current query is not finished (phase {phase!r}); {finish_hint} before {doing}.")
