"""Time travel over a thread's checkpoints: history, state at a checkpoint, fork with edits, replay, diff.

``history`` never replays channels: each checkpoint is summarised from the writes that produced it (stored against
its parent), which name their slot and item number. One ``alist`` call serves a page; a light ``(id, parent)`` query
labels branches.
"""

from __future__ import annotations

import difflib
from typing import Any

from redraft.errors import CheckpointNotFoundError, InvalidInputError, PhaseError
from redraft.graph.convergence import similarity
from redraft.graph.runner import Runner, describe
from redraft.graph.state import event, phase_of, versions

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
    """Label each checkpoint with the tip of the branch it belongs to; the newest tip (the live head) wins."""
    children = {pid for pid in parents.values() if pid}
    tips = sorted((cid for cid in parents if cid not in children), reverse=True)
    label: dict[str, str] = {}
    for tip in tips:
        node: str | None = tip
        while node is not None and node not in label:
            label[node] = tip
            node = parents.get(node)
    return label


def summarise(writes: list[tuple]) -> dict[str, Any]:
    """What the writes made from a parent checkpoint did: node, slot, item counts, similarity, stop reason."""
    info: dict[str, Any] = {"node": None, "slot": None, "critiques": None, "revisions": None}
    for _, channel, value in writes:
        items = value if isinstance(value, list) else [value]
        if channel == "run_log":
            for ev in items:
                op, n = ev.get("op"), ev.get("n")
                info["slot"] = ev.get("slot")
                if op == "open":
                    info.update(node="input", critiques=0, revisions=0)
                elif op == "draft":
                    info.update(node="draft", critiques=0, revisions=0)
                elif op in ("critique", "edit_critique"):
                    info.update(node="critique", critiques=n, revisions=(n or 1) - 1)
                elif op in ("revision", "edit_revision"):
                    info.update(node="revise", critiques=n, revisions=n)
                if op.startswith("edit_"):
                    info["edited"] = True
        elif channel == "scores" and items:
            info["similarity"] = items[-1]["similarity"]
        elif channel == "outcomes" and items:
            info["stop_reason"] = items[-1]["stop_reason"]
            info["slot"] = items[-1]["slot"]
            info["node"] = info["node"] or "critique"
    return info


def summarise_snapshot(channel_values: dict) -> dict[str, Any]:
    """Summary of a checkpoint written by ``update_state`` (a fork), from the snapshot it carries."""
    run_log = getattr(channel_values.get("run_log"), "value", None) or []
    if not run_log:
        return {"node": "update", "edited": True}
    slot = run_log[-1]
    critiques, revisions = len(slot["critique"]), len(slot["revision"])
    info = {
        "node": "critique" if critiques > revisions else "revise",
        "slot": len(run_log) - 1,
        "critiques": critiques,
        "revisions": revisions,
        "edited": True,
    }
    scores = [s for s in getattr(channel_values.get("scores"), "value", None) or [] if s["slot"] == len(run_log) - 1]
    if info["node"] == "revise" and scores:
        info["similarity"] = scores[-1]["similarity"]
    return info


def _phase(info: dict[str, Any]) -> str | None:
    if info.get("stop_reason"):
        return "done"
    node = info.get("node")
    if node in ("draft", "revise"):
        return "ready_to_critique"
    if node == "critique":
        return "needs_revision"
    if node == "input":
        return "needs_draft"
    return None


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
    by_id = {t.config["configurable"]["checkpoint_id"]: t for t in tuples}
    labels = branches(await lineage(runner, thread_id))
    head = max(labels.values()) if labels else None
    entries = []
    for t in page:
        cid = t.config["configurable"]["checkpoint_id"]
        parent_id = (t.parent_config or {}).get("configurable", {}).get("checkpoint_id")
        parent = by_id.get(parent_id) if parent_id else None
        if parent_id and parent is None:
            parent = await saver.aget_tuple(runner.config(thread_id, parent_id))
        if t.metadata.get("source") == "update":  # a fork: its delta channels are snapshotted in the checkpoint
            info = summarise_snapshot(t.checkpoint.get("channel_values") or {})
        elif parent is not None:
            info = summarise(parent.pending_writes or [])
        else:
            info = {"node": "start"}
        entries.append(
            {
                "checkpoint_id": cid,
                "parent_id": parent_id,
                "step": t.metadata.get("step"),
                "source": t.metadata.get("source"),
                "node": info.get("node"),
                "phase": _phase(info) or ("empty" if parent is None else None),
                "slot": info.get("slot"),
                "critiques": info.get("critiques"),
                "revisions": info.get("revisions"),
                "similarity": info.get("similarity"),
                "stop_reason": info.get("stop_reason"),
                "edited": info.get("edited", False),
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
    await _require_checkpoint(runner, thread_id, checkpoint_id)
    return await runner.status(thread_id, checkpoint_id)


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
            update = {
                "run_log": [event("edit_revision", index, n, text=text)],
                "scores": [{"slot": index, "iteration": n, "similarity": similarity(previous, text)}],
            }
            as_node = "revise"
        else:
            raise InvalidInputError("A fork needs an edited critique or revision (use replay to re-run unchanged).")
        if phase == "done":
            raise PhaseError("That checkpoint ends a finished query; fork from an earlier one.")
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
    return {"from": a, "to": b, "similarity": similarity(vs[a], vs[b]), "diff": word_diff(vs[a], vs[b], a, b)}


def word_diff(old: str, new: str, a: int, b: int, context: int = 3) -> str:
    """Unified diff, one word per line. ``autojunk`` is off: with it, difflib treats every frequent word (like
    "the") of a text over 200 words as junk and reports near-total rewrites for small edits."""
    x, y = old.split(), new.split()
    out = [f"--- version {a}", f"+++ version {b}"]
    for group in difflib.SequenceMatcher(None, x, y, autojunk=False).get_grouped_opcodes(context):
        i1, i2, j1, j2 = group[0][1], group[-1][2], group[0][3], group[-1][4]
        out.append(f"@@ -{i1 + 1},{i2 - i1} +{j1 + 1},{j2 - j1} @@")
        for tag, p1, p2, q1, q2 in group:
            if tag == "equal":
                out.extend(" " + w for w in x[p1:p2])
                continue
            out.extend("-" + w for w in x[p1:p2])
            out.extend("+" + w for w in y[q1:q2])
    return "\n".join(out)


__all__ = ["describe", "diff", "fork", "history", "replay", "state_at"]
