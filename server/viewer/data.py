"""What the viewer's pages show, read with the functions the MCP tools use: ``history`` (graph/timetravel.py) for the
timeline, ``describe`` (graph/view.py) for the thread at a checkpoint, the word-diff opcodes (graph/worddiff.py) and
``similarity_async`` (graph/convergence.py) for diffs, and ``lineage``/``branches`` for the branches of a fork.

A timeline page reads one page of checkpoints (``history``'s ``alist`` with a limit) and the light ``(id, parent)``
list, so a thread of thousands of checkpoints costs about what a short one does.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from redraft.graph import timetravel as tt
from redraft.graph.convergence import off_loop, similarity_async
from redraft.graph.runprogress import head_checkpoint_id
from redraft.graph.state import outcome_for
from redraft.graph.view import describe
from redraft.graph.worddiff import opcodes

PAGE = 50  # checkpoints per timeline page
MAX_BRANCHES = 6  # branches shown side by side (the newest)
DIFF_SEGMENTS = 20_000  # a diff longer than this many segments is cut (with a note)


def short(checkpoint_id: str | None) -> str:
    """A checkpoint id as people read it: its last 8 characters (ids share a long time-based prefix)."""
    return checkpoint_id[-8:] if checkpoint_id else "-"


def clock(ts: str | None) -> str:
    """An ISO timestamp as ``YYYY-MM-DD HH:MM:SS`` (UTC)."""
    if not ts:
        return "-"
    try:
        return dt.datetime.fromisoformat(ts).astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return ts


def epoch(seconds: float | None) -> str:
    if not seconds:
        return "-"
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


class BranchNames:
    """Branch tips named ``b1``, ``b2``, ... in the order they were made (ids sort by creation); ``b1`` is the
    original line, the highest number the newest fork."""

    def __init__(self, parents: dict[str, str | None]) -> None:
        self.parents = parents
        self.label = tt.branches(parents)
        self.tips = sorted(set(self.label.values()))
        self.number = {tip: i + 1 for i, tip in enumerate(self.tips)}
        self.head = max(self.tips) if self.tips else None
        self.children: dict[str, int] | None = None

    def name(self, tip: str | None) -> str:
        return f"b{self.number[tip]}" if tip in self.number else "-"

    def fork_point(self, tip: str) -> str | None:
        """Where a branch leaves the others: the nearest ancestor of its tip with more than one child."""
        if self.children is None:
            self.children = {}
            for parent in self.parents.values():
                if parent:
                    self.children[parent] = self.children.get(parent, 0) + 1
        node = self.parents.get(tip)
        while node is not None and self.children.get(node, 0) < 2:
            node = self.parents.get(node)
        return node


async def branch_names(runner, thread: str) -> BranchNames:
    return BranchNames(await tt.lineage(runner, thread))


async def timeline(runner, thread: str, before: str | None, names: BranchNames) -> dict:
    """One page of the thread's checkpoints, newest first (``history``), with branch names and display fields."""
    page = await tt.history(runner, thread, PAGE, before)
    rows = []
    for entry in page["checkpoints"]:
        rows.append(
            {
                **entry,
                "short": short(entry["checkpoint_id"]),
                "time": clock(entry["created_at"]),
                "branch_name": names.name(entry["branch"]),
                "branch_number": names.number.get(entry["branch"], 0),
                "iteration": entry["revisions"],
            }
        )
    return {"rows": rows, "next_before": page["next_before"], "head": page["head"]}


def _scores(state: dict, slot: int) -> dict[int, dict]:
    """Per iteration of a slot: its similarity and, when the critic scored it, its score (a later record wins)."""
    out: dict[int, dict] = {}
    for entry in state.get("scores") or []:
        if entry.get("slot") != slot:
            continue
        item = out.setdefault(entry["iteration"], {})
        for key in ("similarity", "score"):
            if isinstance(entry.get(key), (int, float)) and not isinstance(entry.get(key), bool):
                item[key] = float(entry[key])
    return out


async def thread_at(runner, thread: str, checkpoint_id: str | None) -> dict:
    """The thread at a checkpoint (the head by default): ``describe``'s view, plus the versions with the critiques
    that produced them and the per-iteration similarity and score."""
    if checkpoint_id is not None:
        await tt._require_checkpoint(runner, thread, checkpoint_id)
    snap = await runner.snapshot(thread, checkpoint_id)
    view = describe(thread, snap)
    state = snap.values or {}
    slot = view["slot"]
    rows: list[dict] = []
    pending_critique = None
    per_iteration: dict[int, dict] = {}
    if slot:
        index = view["slot_index"]
        per_iteration = _scores(state, index)
        texts = [slot["draft"]] if slot["draft"] is not None else []
        texts += slot["revision"]
        for k, text in enumerate(texts):
            rows.append(
                {
                    "version": k,
                    "label": "draft" if k == 0 else f"revision {k}",
                    "text": text,
                    "critique": slot["critique"][k - 1] if k >= 1 and k - 1 < len(slot["critique"]) else None,
                    "similarity": per_iteration.get(k, {}).get("similarity") if k else None,
                    "score": per_iteration.get(k, {}).get("score"),
                    "best": view["best_version"] == k,
                }
            )
        if len(slot["critique"]) > len(slot["revision"]):
            pending_critique = slot["critique"][-1]
        outcome = outcome_for(state, index)
        view["outcome"] = outcome
    view["versions"] = rows
    view["last_critique"] = pending_critique
    # similarity is recorded per revision (k >= 1); the critic's score per version critiqued (the draft's too)
    view["points"] = [{"iteration": k, **v} for k, v in sorted(per_iteration.items()) if v]
    view["slots_queries"] = [s.get("query") for s in state.get("run_log") or []]
    return view


async def word_diff(old: str, new: str) -> dict:
    """A word diff of two versions as segments (``equal``/``delete``/``insert``) for inline display, with their
    similarity. The opcodes are the MCP ``diff`` tool's (bounded in time, computed off the event loop)."""

    def build() -> tuple[list[tuple[str, str]], bool]:
        x, y = old.split(), new.split()
        segments: list[tuple[str, str]] = []
        for tag, i1, i2, j1, j2 in opcodes(x, y):
            if tag == "equal":
                segments.append(("equal", " ".join(x[i1:i2])))
                continue
            if i2 > i1:
                segments.append(("delete", " ".join(x[i1:i2])))
            if j2 > j1:
                segments.append(("insert", " ".join(y[j1:j2])))
            if len(segments) > DIFF_SEGMENTS:
                return segments, True
        return segments, False

    segments, cut = await off_loop(build)
    changed = sum(1 for tag, _ in segments if tag != "equal")
    return {"segments": segments, "cut": cut, "changes": changed, "similarity": await similarity_async(old, new)}


async def branches_side_by_side(runner, thread: str, names: BranchNames) -> list[dict]:
    """The newest branches of the thread, each as its tip's view with where it forked from."""
    columns = []
    for tip in sorted(names.tips, reverse=True)[:MAX_BRANCHES]:
        view = await thread_at(runner, thread, tip)
        fork = names.fork_point(tip)
        columns.append(
            {
                "tip": tip,
                "short": short(tip),
                "name": names.name(tip),
                "number": names.number.get(tip, 0),
                "head": tip == names.head,
                "fork_point": fork,
                "fork_short": short(fork),
                "view": view,
            }
        )
    return columns


async def head(runner, thread: str) -> str:
    return await head_checkpoint_id(runner, thread)


async def companions_with_threads(runner, session_id: str, companions: list[str]) -> dict[str, str]:
    """companion -> its thread's head checkpoint id ('' when the companion has no checkpoint in this session)."""
    from redraft.graph.runner import thread_id_for

    return {c: await head_checkpoint_id(runner, thread_id_for(session_id, c)) for c in companions}


def chart(points: list[dict], threshold: float | None, stop_reason: str | None) -> dict[str, Any] | None:
    """Coordinates of the similarity (and score) chart, drawn as inline SVG by the template: no script, no library."""
    if not points:
        return None
    width, height, left, right, top, bottom = 560, 200, 44, 30, 14, 30
    first, n = min(p["iteration"] for p in points), max(p["iteration"] for p in points)
    sims = [p["similarity"] for p in points if "similarity" in p]
    scores = [p["score"] for p in points if "score" in p]
    low = min([*sims, *([threshold] if threshold is not None else []), 1.0])
    low = max(0.0, min(0.9, low - 0.05))
    score_scale = max(1.0, *scores) if scores else 1.0
    score_scale = 1.0 if score_scale <= 1.0 else (10.0 if score_scale <= 10 else 100.0)

    def x(i: int) -> float:
        return left + (width - left - right) * ((i - first) / (n - first) if n > first else 0.5)

    def y(v: float) -> float:
        return top + (height - top - bottom) * (1 - (v - low) / (1 - low or 1))

    def y_score(v: float) -> float:  # the score has its own axis, on the right: 0 at the bottom, the scale at the top
        return top + (height - top - bottom) * (1 - min(1.0, max(0.0, v / score_scale)))

    def series(key: str, place) -> list[dict]:
        return [
            {"x": round(x(p["iteration"]), 1), "y": round(place(p[key]), 1), "v": p[key]} for p in points if key in p
        ]

    sim_pts = series("similarity", lambda v: y(min(1.0, max(low, v))))
    score_pts = series("score", y_score)
    ticks = [round(low + (1 - low) * k / 4, 3) for k in range(5)]
    return {
        "width": width,
        "height": height,
        "left": left,
        "right": width - right,
        "top": top,
        "bottom": height - bottom,
        "yticks": [{"y": round(y(t), 1), "label": f"{t:.2f}"} for t in ticks],
        "xticks": [{"x": round(x(i), 1), "label": str(i)} for i in range(first, n + 1)],
        "similarity": sim_pts,
        "similarity_path": " ".join(f"{p['x']},{p['y']}" for p in sim_pts),
        "score": score_pts,
        "score_path": " ".join(f"{p['x']},{p['y']}" for p in score_pts),
        "score_scale": score_scale,
        "score_ticks": [
            {"y": round(y_score(score_scale * k / 2), 1), "label": f"{score_scale * k / 2:g}"} for k in range(3)
        ]
        if score_pts
        else [],
        "threshold": None if threshold is None else {"y": round(y(max(low, threshold)), 1), "v": threshold},
        "stop": None if not stop_reason else {"x": round(x(n), 1), "label": stop_reason},
    }
