"""A step's lease on its thread: granted with a fencing token, renewed by a heartbeat, given up when the step ends.

* The heartbeat renews every third of the lease's life. A failed renewal (database unreachable) is retried with
  backoff; if the lease cannot be renewed before a safety margin ahead of its expiry, or another grant has replaced
  it, the step aborts itself (its task is cancelled, even mid model call) before anyone else may take the thread
  over, and the caller gets ``LeaseLostError``.
* Whatever the heartbeat misses (a paused process, a clock jump), the fence catches: every checkpoint write checks
  the token in its own transaction (``graph/fencing.py``), so a step that lost its lease commits nothing.

So a step is committed at most once; its model calls may be repeated after a fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from redraft.errors import LeaseLostError, RedraftError
from redraft.graph.database import SESSION_CHECK, Database, Lease
from redraft.graph.fencing import DEFERRED, FENCE, DeferredWrites, Fence, lease_lost

log = logging.getLogger("redraft.leases")

# Every lease this process holds right now: id -> (database, lease, the task holding it). A draining server
# (server/drain.py) waits for this to empty, then cancels and releases whatever is left.
HELD: dict[int, tuple[Database, Lease, asyncio.Task]] = {}


_BACKGROUND: set[asyncio.Task] = set()  # best-effort clean-ups in flight (a reference keeps each alive)


def _in_background(work) -> None:
    async def quietly() -> None:
        with contextlib.suppress(Exception):
            await work

    task = asyncio.create_task(quietly())
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


def margin(ttl: float) -> float:
    """How long before expiry a holder that cannot renew gives up: enough for its own cancellation to land."""
    return min(max(0.25 * ttl, 0.2), 5.0)


@contextlib.asynccontextmanager
async def hold(db: Database, thread_id: str) -> AsyncIterator[Lease]:
    started = time.monotonic()
    lease = await db.grant_checked(thread_id, SESSION_CHECK.get())
    task = asyncio.current_task()
    ttl = db.lease_ttl
    abandon_at = started + ttl - margin(ttl)  # local clock, counted from before the grant was sent: conservative

    running = True

    def abort(reason: str) -> None:
        if running and not lease.lost:
            lease.lost = True
            log.warning("step lease on %s lost (%s): aborting the step", thread_id, reason)
            task.cancel()

    async def heartbeat() -> None:
        nonlocal abandon_at
        while True:
            await asyncio.sleep(ttl / 3)
            delay = 0.05
            while True:
                sent = time.monotonic()
                left = abandon_at - sent
                if left <= 0:
                    return abort("could not renew it in time")
                # the renewal runs on its own, so a stalled one cannot hold the abort back (a driver may take a
                # while to give up a stalled query after it is cancelled)
                renewal = asyncio.create_task(db.renew(lease))
                try:
                    try:
                        await asyncio.wait({renewal}, timeout=left)
                    except asyncio.CancelledError:  # the step ended: its lease is released, not renewed
                        renewal.cancel()
                        raise
                    if not renewal.done():
                        renewal.cancel()
                        return abort("could not renew it in time")
                    ours = renewal.result()
                except (RedraftError, OSError) as exc:
                    log.info("lease renewal on %s failed (%s); retrying", thread_id, type(exc).__name__)
                    await asyncio.sleep(min(delay, max(0.0, abandon_at - time.monotonic())))
                    delay = min(delay * 2, 1.0)
                    continue
                if not ours:
                    return abort("another grant replaced it")
                abandon_at = sent + ttl - margin(ttl)
                break

    fence = FENCE.set(Fence(thread_id, lease.token)) if db.kind != "memory" else None
    beat = asyncio.create_task(heartbeat()) if db.kind != "memory" else None
    HELD[id(lease)] = (db, lease, task)
    deferred = DeferredWrites()
    held_back = DEFERRED.set(deferred)
    released = False
    try:
        try:
            yield lease
        finally:
            DEFERRED.reset(held_back)
        # writes no checkpoint took along (a run stopped at a gate), and the lease in the same statement; the
        # heartbeat stops first, so no renewal can find the lease gone and abort a step that completed
        if beat is not None:
            beat.cancel()
        released = await deferred.flush(release=fence is not None)
    except asyncio.CancelledError:
        if lease.lost and task.uncancel() == 0:
            raise lease_lost(thread_id) from None
        raise
    except LeaseLostError:
        lease.lost = True
        raise
    finally:
        running = False
        HELD.pop(id(lease), None)
        # The heartbeat stops first and synchronously: whatever happens below (a second cancellation landing in an
        # await), it must never go on renewing a lease no step holds.
        if beat is not None:
            beat.cancel()
        try:
            if deferred.batches and not lease.lost:  # the block failed: still send what completed tasks wrote
                with contextlib.suppress(Exception):
                    await asyncio.shield(deferred.flush())  # fenced: it needs FENCE, reset below
        finally:
            if fence is not None:
                FENCE.reset(fence)
            if lease.lost:
                # Released even when lost, but in the background: the release names our token, so it frees the
                # thread at once if the lease is still ours (our own renewal came too late: a retry need not wait
                # for it to expire) and does nothing if another grant replaced it; a write of ours still in flight is
                # refused by its fence either way. Never awaited: the database may be what is unreachable, and the
                # aborted step must end now.
                _in_background(db.release(lease))
            elif not released:
                with contextlib.suppress(Exception):
                    await asyncio.shield(db.release(lease))
