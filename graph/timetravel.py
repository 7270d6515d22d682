"""Time travel over a thread's checkpoints: history, state at a checkpoint, fork with edits, replay, diff.

``history`` never replays channels: each checkpoint is summarised from the writes that produced it (stored against
its parent), which name their slot and item number, or from the log it stores whole (forks, replays), or, when it
received no write, from its parent's summary (``Summaries``). One ``alist`` call serves a page; a light
``(id, parent)`` query labels branches.
"""

from __future__ import annotations

from typing import Any

from redraft.errors import CheckpointNotFoundError, InvalidInputError, PhaseError
from redraft.graph.clock import order_after
from redraft.graph.convergence import similarity_async
from redraft.graph.runner import Runner
from redraft.graph.state import event, phase_of, versions
from redraft.graph.view import describe
from redraft.graph.worddiff import word_diff_async
from redraft.nodes.embeddings import similarity_of
from redraft.nodes.usage import total

MAX_PAGE = 200


async def lineage(runner: Runner, thread_id: str) -> dict[str, str | None]:
    """checkpoint id -> parent id for every checkpoint of the thread's root namespace."""
    p = runner.persistence
    if p.kind == "memory":
        return {cid: parent for cid, (_, _, parent) in p.saver.storage.get(thread_id, {}).get("", {}).items()}
    rows = await p.db.fetchall(
        "SELECT checkpoint_id, parent_checkpoint_id FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ''",
        (thread_id,),
    )
    return {r["checkpoint_id"]: r["parent_checkpoint_id"] for r in rows}


def branches(parents: dict[str, str | None]) -> dict[str, str]:
    """Label each checkpoint with the tip of the branch it belongs to; the newest tip (the live head) wins.

    "Newest" is the greatest id, which is also what every saver takes as the thread's head. Ids are time-based, but
    every write to a thread first moves the writer's id clock past the thread's newest id (``graph/clock.py``), so
    the greatest id is the one written last even when the replicas' clocks disagree."""
    children = {pid for pid in parents.values() if pid}
    tips = sorted((cid for cid in parents if cid not in children), reverse=True)
    label: dict[str, str] = {}
    for tip in tips:
        node: str | None = tip
        while node is not None and node not in label:
            label[node] = tip
            node = parents.get(node)
    return label


_ABSENT = object()
_EMPTY = {"slot": None, "drafted": False, "critiques": None, "revisions": None, "stop_reason": None}


def _items(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _stored(channel_values: dict, channel: str) -> Any:
    """A log channel's whole value when the checkpoint stores it (a snapshot), else ``_ABSENT``: then the value is the
    parent's, plus the writes stored on the parent. This is how LangGraph rebuilds a ``DeltaChannel``."""
    if channel not in channel_values:
        return _ABSENT
    value = channel_values[channel]
    return getattr(value, "value", value) or []


def _slot_counts(run_log: list) -> dict:
    if not run_log:
        return {k: v for k, v in _EMPTY.items() if k != "stop_reason"}
    slot = run_log[-1]
    return {
        "slot": len(run_log) - 1,
        "drafted": slot["draft"] is not None,
        "critiques": len(slot["critique"]),
        "revisions": len(slot["revision"]),
    }


def _event_counts(ev: dict) -> dict:
    """The current slot's counts right after a run_log event: events name their slot and item number, and each op is
    legal in one phase only (``state._check_addressing``), so one event fixes all of them."""
    op, n, slot = ev.get("op"), ev.get("n") or 0, ev.get("slot")
    if op == "open":
        return {"slot": slot, "drafted": False, "critiques": 0, "revisions": 0}
    if op == "draft":
        return {"slot": slot, "drafted": True, "critiques": 0, "revisions": 0}
    if op in ("critique", "edit_critique"):
        return {"slot": slot, "drafted": True, "critiques": n, "revisions": n - 1}
    return {"slot": slot, "drafted": True, "critiques": n, "revisions": n}


def phase_of_summary(summary: dict) -> str:
    if summary["slot"] is None:
        return "empty"
    if summary["stop_reason"]:
        return "done"
    if not summary["drafted"]:
        return "needs_draft"
    return "needs_revision" if summary["critiques"] > summary["revisions"] else "ready_to_critique"


class Summaries:
    """Summaries of checkpoints without replaying channels: the current slot's phase and counts, the node whose step
    wrote the checkpoint, the similarity it recorded, and whether it was an edit.

    A checkpoint's state is its parent's plus the writes stored on the parent, except for a channel the checkpoint
    stores whole (forks and replays snapshot every log channel the parent has writes for, since those writes
    belong to another child). Run_log events name their slot and item number, so the last one fixes the counts;
    a checkpoint that received no event (a replay's first checkpoint, the one before a new query's input) has its
    parent's counts. Memoised per checkpoint id; one instance per request.
    """

    def __init__(self, runner: Runner, thread_id: str, tuples: dict[str, Any]) -> None:
        self.runner = runner
        self.thread_id = thread_id
        self.tuples = dict(tuples)
        self.memo: dict[str, dict] = {}

    async def tuple(self, checkpoint_id: str) -> Any:
        if checkpoint_id not in self.tuples:
            self.tuples[checkpoint_id] = await self.runner.persistence.saver.aget_tuple(
                self.runner.config(self.thread_id, checkpoint_id)
            )
        return self.tuples[checkpoint_id]

    async def of(self, t: Any) -> dict:
        cid = t.config["configurable"]["checkpoint_id"]
        if cid not in self.memo:
            self.memo[cid] = await self._summarise(t)
        return self.memo[cid]

    async def _summarise(self, t: Any) -> dict:
        values = t.checkpoint.get("channel_values") or {}
        source = (t.metadata or {}).get("source")
        parent_id = (t.parent_config or {}).get("configurable", {}).get("checkpoint_id")
        parent = await self.tuple(parent_id) if parent_id else None
        # the parent's writes that reach this checkpoint: a channel it stores whole ignores them
        writes = [w for w in (parent.pending_writes or []) if w[1] not in values] if parent is not None else []
        events = [ev for _, ch, v in writes if ch == "run_log" for ev in _items(v)]
        outcomes = [o for _, ch, v in writes if ch == "outcomes" for o in _items(v)]
        # similarity entries only: the critic's score entries (nodes/scoring.py) share the log
        scores = [s for _, ch, v in writes if ch == "scores" for s in _items(v) if "similarity" in s]
        spent = [u for _, ch, v in writes if ch == "usage" for u in _items(v) if isinstance(u, dict)]

        base: dict | None = None
        stored_run_log = _stored(values, "run_log")
        if stored_run_log is not _ABSENT:
            info = _slot_counts(stored_run_log)
        elif events:
            info = _event_counts(events[-1])
        elif parent is not None:
            base = await self.of(parent)
            info = {k: base[k] for k in ("slot", "drafted", "critiques", "revisions")}
        else:
            info = _slot_counts([])

        slot = info["slot"]
        stored_outcomes = _stored(values, "outcomes")
        mine = [o for o in (outcomes if stored_outcomes is _ABSENT else stored_outcomes) if o["slot"] == slot]
        if slot is None or mine or stored_outcomes is not _ABSENT or events:
            # (an event for a slot is only ever written while the slot is open)
            info["stop_reason"] = mine[-1]["stop_reason"] if mine else None
        elif parent is not None:
            base = base or await self.of(parent)
            info["stop_reason"] = base["stop_reason"] if base["slot"] == slot else None
        else:
            info["stop_reason"] = None

        info["edited"] = source == "update" or any(str(ev.get("op", "")).startswith("edit_") for ev in events)
        info["similarity"] = None
        if source == "fork":
            info["node"] = "replay"  # a replay's first checkpoint: a copy of the checkpoint it re-runs from
        elif events:
            info["node"] = {"open": "input", "draft": "draft", "critique": "critique", "edit_critique": "critique"}.get(
                events[-1]["op"], "revise"
            )
        elif outcomes:
            info["node"] = "critique"  # the critic was satisfied: an outcome and no run_log event
        elif source == "update" and info["slot"] is not None:
            info["node"] = "critique" if info["critiques"] > info["revisions"] else "revise"
        elif parent is None or source == "input":
            info["node"] = "start"
        else:
            info["node"] = None
        # the tokens and cost of the step that wrote this checkpoint (its model calls: graph/budget.py)
        step = total(spent) if spent else None
        info["tokens"], info["cost"] = (step["total_tokens"], step["cost"]) if step else (None, None)
        if scores:
            info["similarity"] = scores[-1]["similarity"]
        elif source == "update" and info["node"] == "revise":
            stored_scores = _stored(values, "scores")
            stored = stored_scores if stored_scores is not _ABSENT else []
            mine_scores = [s for s in stored if s["slot"] == slot and "similarity" in s]
            info["similarity"] = mine_scores[-1]["similarity"] if mine_scores else None
        return info


async def history(runner: Runner, thread_id: str, limit: int = 20, before: str | None = None) -> dict:
    if not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidInputError(f"limit must be an integer from 1 to {MAX_PAGE}.")
    saver = runner.persistence.saver
    config = runner.config(thread_id)
    before_cfg = None
    if before is not None:
        await _require_checkpoint(runner, thread_id, before)
        before_cfg = runner.config(thread_id, before)
    tuples = [t async for t in saver.alist(config, before=before_cfg, limit=limit + 1)]
    page, extra = tuples[:limit], tuples[limit:]
    summaries = Summaries(runner, thread_id, {t.config["configurable"]["checkpoint_id"]: t for t in tuples})
    labels = branches(await lineage(runner, thread_id))
    head = max(labels.values()) if labels else None
    entries = []
    for t in page:
        cid = t.config["configurable"]["checkpoint_id"]
        info = await summaries.of(t)
        entries.append(
            {
                "checkpoint_id": cid,
                "parent_id": (t.parent_config or {}).get("configurable", {}).get("checkpoint_id"),
                "step": t.metadata.get("step"),
                "source": t.metadata.get("source"),
                "node": info["node"],
                "phase": phase_of_summary(info),
                "slot": info["slot"],
                "critiques": info["critiques"],
                "revisions": info["revisions"],
                "similarity": info["similarity"],
                "tokens": info["tokens"],
                "cost": info["cost"],
                "stop_reason": info["stop_reason"],
                "edited": info["edited"],
                "created_at": t.checkpoint.get("ts"),
                "branch": labels.get(cid),
                "on_head_branch": labels.get(cid) == head,
            }
        )
    next_before = page[-1].config["configurable"]["checkpoint_id"] if extra else None
    return {"thread_id": thread_id, "checkpoints": entries, "next_before": next_before, "head": head}


async def _require_checkpoint(runner: Runner, thread_id: str, checkpoint_id: str):
    if not isinstance(checkpoint_id, str) or not checkpoint_id or len(checkpoint_id) > 64:
        raise CheckpointNotFoundError("Unknown checkpoint id for this thread.")
    found = await runner.persistence.saver.aget_tuple(runner.config(thread_id, checkpoint_id))
    if found is None:
        raise CheckpointNotFoundError("Unknown checkpoint id for this thread.")
    return found


async def state_at(runner: Runner, thread_id: str, checkpoint_id: str) -> dict:
    """The thread at a checkpoint, with the branch it belongs to (labelled as ``history`` labels it)."""
    await _require_checkpoint(runner, thread_id, checkpoint_id)
    result = await runner.status(thread_id, checkpoint_id)
    labels = branches(await lineage(runner, thread_id))
    head = max(labels.values()) if labels else None
    return {**result, "branch": labels.get(checkpoint_id), "on_head_branch": labels.get(checkpoint_id) == head}


async def _order_after_head(runner: Runner, thread_id: str) -> None:
    """Before writing a new branch: its checkpoints must sort after the thread's head (graph/clock.py)."""
    head = await runner.persistence.saver.aget_tuple(runner.config(thread_id))
    if head is not None:
        order_after(head.config["configurable"]["checkpoint_id"])


async def fork(
    runner: Runner, thread_id: str, checkpoint_id: str, critique: str | None = None, revision: str | None = None
) -> dict:
    """Branch from a past checkpoint, optionally replacing its latest critique or revision. The original branch stays
    readable by checkpoint id; the thread's head becomes the fork, so refine/resume continue from it."""
    if critique is not None and revision is not None:
        raise InvalidInputError("Edit either the critique or the revision in one fork, not both.")
    limit = runner.settings.max_text_chars
    await _require_checkpoint(runner, thread_id, checkpoint_id)
    async with runner.persistence.db.thread_lock(thread_id):
        snap = await runner.snapshot(thread_id, checkpoint_id)
        state = snap.values
        phase = phase_of(state)
        index = len(state.get("run_log") or []) - 1
        if critique is not None:
            if phase != "needs_revision":
                raise PhaseError(f"That checkpoint has no pending critique to edit (phase {phase!r}).")
            text = runner.check_text(critique, "critique", limit)
            n = len(state["run_log"][index]["critique"])
            update, as_node = {"run_log": [event("edit_critique", index, n, text=text)]}, "critique"
        elif revision is not None:
            slot = state["run_log"][index] if index >= 0 else None
            if phase != "ready_to_critique" or not slot or not slot["revision"]:
                raise PhaseError(f"That checkpoint has no latest revision to edit (phase {phase!r}).")
            text = runner.check_text(revision, "revision", limit)
            n = len(slot["revision"])
            previous = versions(slot)[-2]
            score, method = await similarity_of(runner.settings, previous, text)
            update = {
                "run_log": [event("edit_revision", index, n, text=text)],
                # the configured similarity (embedding or text), as the revise node scores a revision
                "scores": [{"slot": index, "iteration": n, "similarity": score, **method}],
            }
            as_node = "revise"
        else:
            raise InvalidInputError("A fork needs an edited critique or revision (use replay to re-run unchanged).")
        if phase == "done":
            raise PhaseError("That checkpoint ends a finished query; fork from an earlier one.")
        await _order_after_head(runner, thread_id)
        try:
            await runner.graph.aupdate_state(runner.config(thread_id, checkpoint_id), update, as_node=as_node)
        except ValueError as exc:  # the run_log reducer refused a misaddressed edit
            raise InvalidInputError(f"The edit does not fit that checkpoint: {exc}") from None
    return await runner.status(thread_id)


async def replay(runner: Runner, thread_id: str, checkpoint_id: str, on_step=None) -> dict:
    """Re-run the thread from a past checkpoint (new model calls, a new branch); the original stays readable."""
    await _require_checkpoint(runner, thread_id, checkpoint_id)
    async with runner.persistence.db.thread_lock(thread_id):
        snap = await runner.snapshot(thread_id, checkpoint_id)
        if not snap.next:
            raise PhaseError("Nothing to replay from that checkpoint: it is the end of a run.")
        stepwise = (snap.values.get("run_config") or {}).get("mode") == "step"
        await _order_after_head(runner, thread_id)
        end = await runner._run(thread_id, None, stepwise=stepwise, on_step=on_step, checkpoint_id=checkpoint_id)
    return await runner._view(thread_id, end)


async def diff(runner: Runner, thread_id: str, a: int, b: int, checkpoint_id: str | None = None) -> dict:
    """Unified diff and similarity between versions ``a`` and ``b`` (0 = draft, k = revision k) of the current slot."""
    if checkpoint_id is not None:
        await _require_checkpoint(runner, thread_id, checkpoint_id)
    state = (await runner.snapshot(thread_id, checkpoint_id)).values
    run_log = state.get("run_log") or []
    if not run_log:
        raise PhaseError("This thread has no query yet.")
    vs = versions(run_log[-1])
    for v in (a, b):
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < len(vs):
            raise InvalidInputError(f"Version {v!r} does not exist: this query has versions 0..{len(vs) - 1}.")
    old, new = vs[a], vs[b]
    # both are bounded in time and run in a worker thread for big texts: a worst-case diff stalls no other session
    return {
        "from": a,
        "to": b,
        "similarity": await similarity_async(old, new),
        "diff": await word_diff_async(old, new, a, b),
    }


__all__ = ["describe", "diff", "fork", "history", "replay", "state_at"]
