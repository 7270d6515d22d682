"""Checkpoint ids that sort in causal order, whatever the machines' clocks say.

LangGraph names checkpoints with time-based uuid6 ids, and every saver takes a thread's newest id as its live head
(and history labels the newest branch tip the head). Ids from one process only ever increase, but a replica whose
clock is behind would give a new checkpoint (a fork, or the next step) an id below the ones another replica wrote:
the thread's head would stay on the old checkpoint and the new work would be hidden.

So, like a Lamport clock, every operation that is about to write to a thread first moves this process's uuid6
clock past the thread's newest id (``order_after``). Under the thread's lease nothing else writes in between, so
every new checkpoint sorts after everything the thread already holds, and "newest id" means "written last".
"""

from __future__ import annotations

import uuid

from langgraph.checkpoint.base import id as uuid6_clock


def timestamp_of(checkpoint_id: str) -> int | None:
    """The 60-bit timestamp of a uuid6 checkpoint id (None for anything else)."""
    try:
        value = uuid.UUID(checkpoint_id)
    except (TypeError, ValueError, AttributeError):
        return None
    if value.version != 6:
        return None
    return (((value.int >> 80) & 0xFFFFFFFFFFFF) << 12) | ((value.int >> 64) & 0x0FFF)


def order_after(checkpoint_id: str | None) -> None:
    """Make every checkpoint id this process creates from now on sort after ``checkpoint_id``.

    LangGraph's uuid6 generator keeps the last timestamp it used and never goes below it; raising that floor to the
    given id's timestamp makes the next id's timestamp (its most significant field) strictly greater.
    """
    if not checkpoint_id:
        return
    ts = timestamp_of(checkpoint_id)
    if ts is None:
        return
    last = uuid6_clock._last_v6_timestamp
    if last is None or last < ts:
        uuid6_clock._last_v6_timestamp = ts
