"""Metering and run budgets: every step's model calls become ``usage`` log entries (graph/state.py), and a run stops
cleanly with ``stop_reason: "budget"`` once it has used its ``max_tokens_per_run`` or ``max_cost_per_run``.

``metered`` wraps each node of the loop (graph/builder.py), so the nodes themselves know nothing of it:

* it collects the calls ``ModelProvider.complete`` makes while the node runs (nodes/usage.py) and appends them to the
  node's update, each marked with its slot, node, critique/revision number and the run that made it;
* **before** a critique or revision, if the run has already used its budget, the node is not run (no model call is
  started) and the query finishes with ``budget``, keeping its newest finished version;
* **after** a step whose calls bring the run's usage to the budget or past it (``>=``), the same step finishes the
  query with ``budget``: a draft or revision it wrote is kept (it was paid for) and is the answer; a critique is kept
  as the outcome's note and never revised. So a run stops on the exact step that reached its budget and overshoots it
  by at most that step's calls (a call's size is not known before it is made).

Either way the stop is written in the same superstep as the step's own writes: nothing is half-written. A run is one
runner call (a refine, a resume, a background run's attempt, one step tool call): its entries carry the run's marker
(``RedraftContext.run_marker``; in LangGraph Studio / Agent Server, the platform's run id), and the run's usage is
the sum of the entries with its marker. A background run redelivered after a worker crash counts from its
redelivery. A cost budget needs known prices: ``check_budgets`` refuses it at the start for a model priced nowhere.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from redraft.errors import InvalidInputError
from redraft.graph.state import RedraftState, apply_run_log_events, phase_of, scores_for
from redraft.nodes.usage import collecting, total

Node = Callable[[Any, Any], Awaitable[dict]]
BUDGET = "budget"
_PHASE_OF_NODE = {"critique": "ready_to_critique", "revise": "needs_revision"}


def run_marker(runtime: Any) -> str:
    """The marker of the run a node runs in: redraft's own runs carry one in their context; on LangGraph's platform
    it is the platform's run id (else each step is a run of its own)."""
    from redraft.nodes.context import RedraftContext

    ctx = getattr(runtime, "context", None)
    if isinstance(ctx, RedraftContext):
        return ctx.run_marker
    try:
        from langgraph.config import get_config

        config = get_config()
    except Exception:
        config = {}
    for source in (config, config.get("metadata") or {}, config.get("configurable") or {}):
        if source.get("run_id"):
            return str(source["run_id"])
    return uuid.uuid4().hex[:16]


def run_usage(entries: list[dict], marker: str) -> dict:
    return total([e for e in entries if e.get("run") == marker])


def over_budget(run_config: dict, used: dict) -> dict | None:
    """What budget ``used`` (a run's totals) has reached, or None."""
    tokens, cost = run_config.get("max_tokens_per_run"), run_config.get("max_cost_per_run")
    if tokens is not None and used["total_tokens"] >= tokens:
        return {"max_tokens_per_run": tokens, "total_tokens": used["total_tokens"], "cost": used["cost"]}
    if cost is not None and used["cost"] is not None and used["cost"] >= cost:
        return {"max_cost_per_run": cost, "total_tokens": used["total_tokens"], "cost": used["cost"]}
    return None


def _number(slot: dict, node: str) -> int | None:
    """The critique/revision number a step of ``node`` writes (None for the draft)."""
    if node == "critique":
        return len(slot["critique"]) + 1
    if node == "revise":
        return len(slot["revision"]) + 1
    return None


def _finish(state: dict, reached: dict, note: str | None = None) -> dict:
    from redraft.nodes.critique import finish

    index = len(state["run_log"]) - 1
    closed = finish(state, BUDGET, scores_for(state, index), note=note)
    closed["outcomes"] = [{**closed["outcomes"][0], "budget": reached}]
    return closed


def _close_after(state: dict, node: str, update: dict, reached: dict) -> dict:
    """``update`` of a step that reached the budget, finishing the query in the same superstep."""
    events = list(update.get("run_log") or [])
    after = {**state, "scores": [*(state.get("scores") or []), *(update.get("scores") or [])]}
    if node == "critique":  # a critique that will never be revised: kept as the outcome's note
        texts = [e["text"] for e in events if isinstance(e, dict) and e.get("op") == "critique"]
        kept = {k: v for k, v in update.items() if k != "run_log"}
        return {**kept, **_finish(after, reached, texts[-1] if texts else None)}
    after["run_log"] = apply_run_log_events(state["run_log"], [events])
    return {**update, **_finish(after, reached)}


def metered(name: str, node: Node) -> Node:
    """``node`` with its model calls logged in ``usage`` and the run's budgets enforced (see the module doc)."""

    async def step(state: RedraftState, runtime: Any) -> dict:
        marker = run_marker(runtime)
        run_config = state.get("run_config") or {}
        budgeted = run_config.get("max_tokens_per_run") is not None or run_config.get("max_cost_per_run") is not None
        earlier = [e for e in state.get("usage") or [] if e.get("run") == marker] if budgeted else []
        if budgeted and phase_of(state) == _PHASE_OF_NODE.get(name):
            reached = over_budget(run_config, total(earlier))
            if reached is not None:  # the run has used its budget: this step is not started
                return _finish(dict(state), reached)
        run_log = state.get("run_log") or []
        slot = run_log[-1] if run_log else None
        number = _number(slot, name) if slot is not None else None
        with collecting() as calls:
            update = await node(state, runtime)
        if not calls or not isinstance(update, dict):
            return update
        base = {"slot": len(run_log) - 1, "node": name, **({"n": number} if number is not None else {})}
        entries = [{**base, **call, "run": marker} for call in calls]
        update = {**update, "usage": [*(update.get("usage") or []), *entries]}
        if not budgeted or update.get("outcomes"):
            return update
        reached = over_budget(run_config, total([*earlier, *entries]))
        return update if reached is None else _close_after(dict(state), name, update, reached)

    step.__name__ = getattr(node, "__name__", name)
    return step


def check_budgets(max_tokens: Any, max_cost: Any) -> None:
    """Refuse budgets that are not positive numbers."""
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise InvalidInputError(f"max_tokens_per_run must be a whole number of at least 1, got {max_tokens!r}.")
    if max_cost is not None and (
        isinstance(max_cost, bool) or not isinstance(max_cost, (int, float)) or not max_cost > 0
    ):
        raise InvalidInputError(f"max_cost_per_run must be a positive number of US dollars, got {max_cost!r}.")


def check_priced(settings: Any, sampling: dict, max_cost: Any) -> None:
    """A cost budget needs every role's model to have a known price (REDRAFT_PRICES or the bundled table)."""
    if max_cost is None:
        return
    from redraft.nodes.pricing import known_price
    from redraft.nodes.roles import ROLE_OF, endpoint_of, for_role

    for purpose in ROLE_OF:
        chosen = for_role(sampling, purpose)
        if not known_price(settings, chosen["model"], endpoint_of(settings, chosen).base_url):
            raise InvalidInputError(
                f"max_cost_per_run needs a price for model {chosen['model']!r}, and none is known: set one in "
                "REDRAFT_PRICES (USD per million tokens; '{\"*\": 0}' prices every local model at 0), or use "
                "max_tokens_per_run instead."
            )
