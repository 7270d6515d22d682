"""The wrapper every graph node runs in (graph/builder.py): per step, a count and a latency by node and outcome, a
span (``step <node>``) when tracing is on, ``node`` in the log context, and a DEBUG log line with the duration.

A step's outcome is ``ok``, ``interrupted`` (a human gate paused it: LangGraph's ``GraphInterrupt``), ``cancelled``,
or the error code it failed with (``model_error``, ``storage_error``, ``lease_lost``, ... or ``error``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redraft.errors import RedraftError
from redraft.observability import logs, metrics, traces

log = logging.getLogger("redraft.steps")

Node = Callable[[Any, Any], Awaitable[dict]]


def outcome_of(exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    name = type(exc).__name__
    if name in ("GraphInterrupt", "NodeInterrupt", "ParentCommand"):
        return "interrupted"
    return exc.code if isinstance(exc, RedraftError) else "error"  # a bounded set of codes (redraft/errors.py)


def observed_node(name: str, node: Node) -> Node:
    """``node`` measured as one graph step named ``name``."""
    fields = {"node": name}

    async def step(state: Any, runtime: Any) -> dict:
        started = time.perf_counter()
        span = token = None
        if traces.ENABLED:
            span, token = traces.start_span(f"step {name}", {"redraft.node": name})
        m = metrics.current()
        series = m.step_series(name) if m is not None else None
        if series is not None:
            series[2].inc()
        context = logs.push(fields)
        try:
            result = await node(state, runtime)
        except BaseException as exc:
            logs.pop(context)
            outcome = outcome_of(exc)
            elapsed = time.perf_counter() - started
            if series is not None:
                series[2].dec()
                m.steps.labels(name, outcome).inc()
                series[1].observe(elapsed)
            if span is not None:
                failed = outcome not in ("interrupted",)
                span.set_attribute("redraft.step.outcome", outcome)
                traces.end_span(span, token, exc if failed else None, outcome if failed else None)
            code = None if outcome in ("interrupted", "cancelled") else outcome
            log.debug("step %s %s", name, outcome, extra={"node": name, "code": code, "duration": round(elapsed, 6)})
            raise
        logs.pop(context)
        elapsed = time.perf_counter() - started
        if series is not None:
            series[2].dec()
            series[0].inc()
            series[1].observe(elapsed)
        if span is not None:
            span.set_attribute("redraft.step.outcome", "ok")
            traces.end_span(span, token)
        log.debug("step %s ok", name, extra={"node": name, "duration": round(elapsed, 6)})
        return result

    step.__name__ = step.__qualname__ = getattr(node, "__name__", name)
    step.__doc__ = node.__doc__
    return step
