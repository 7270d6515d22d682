"""Thread edits behind double-texting (``multitask_strategy``), each made under the thread's lease.

* ``close_current_query``: ``interrupt`` keeps the stopped run's checkpoints; a newer run with a new query closes the
  unfinished query first (stop reason ``interrupted``, its best version so far kept as its answer), as if it ended.
* ``rollback_to``: ``rollback`` removes every checkpoint the cancelled run wrote, so the thread is back where that
  run started (``base``; an empty base means the thread was empty and is deleted).
"""

from __future__ import annotations

from redraft.graph.runner import Runner
from redraft.graph.state import phase_of, scores_for


async def close_current_query(runner: Runner, thread_id: str, note: str) -> bool:
    """Close the thread's unfinished query with stop reason ``interrupted``; False if there was none to close
    (empty, finished, or not drafted yet -- a new query replaces an undrafted one anyway)."""
    from redraft.nodes.critique import finish

    async with runner.persistence.db.thread_lock(thread_id):
        snap = await runner.snapshot(thread_id)
        values = snap.values or {}
        if phase_of(values) in ("empty", "done", "needs_draft"):
            return False
        index = len(values["run_log"]) - 1
        update = finish(values, "interrupted", scores_for(values, index), note=note)
        await runner.graph.aupdate_state(runner.config(thread_id), update, as_node="critique")
    return True


async def rollback_to(runner: Runner, thread_id: str, base: str) -> int:
    """Delete the thread's checkpoints (and their pending writes) newer than ``base``; all of them if ``base`` is
    empty. Checkpoint ids sort in the order they were written (graph/clock.py). Returns how many were removed."""
    persistence = runner.persistence
    async with persistence.db.thread_lock(thread_id):
        if not base:
            await persistence.saver.adelete_thread(thread_id)
            return -1
        if persistence.kind == "memory":
            return _rollback_memory(persistence.saver, thread_id, base)
        writes = "checkpoint_writes" if persistence.kind == "postgres" else "writes"
        await persistence.db.execute(
            f"DELETE FROM {writes} WHERE thread_id = ? AND checkpoint_ns = '' AND checkpoint_id > ?", (thread_id, base)
        )
        return await persistence.db.execute(
            "DELETE FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = '' AND checkpoint_id > ?",
            (thread_id, base),
        )


def _rollback_memory(saver, thread_id: str, base: str) -> int:
    checkpoints = saver.storage.get(thread_id, {}).get("", {})
    newer = [cid for cid in checkpoints if cid > base]
    for cid in newer:
        del checkpoints[cid]
        saver.writes.pop((thread_id, "", cid), None)
    return len(newer)
