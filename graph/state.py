"""Graph state.

``run_log`` is a list of slots, one per query::

    {query, draft, critique: [...], revision: [...], variant, sampling}

Nodes never write whole slots. They write small *events* (``open``, ``draft``, ``critique``, ``revision`` and,
for forks and human edits, ``edit_critique`` / ``edit_revision``) into a ``DeltaChannel``, which stores each event
once in the checkpoint writes and rebuilds the list by replaying them. Storage therefore grows with the text
written, not with ``iterations x text`` as a plain list reducer would. ``scores``, ``outcomes``, ``history``,
``truncations`` and ``usage`` are append-only logs on the same channel type. A revision close to the text before it
is stored as a patch against that text (``revision_event``, graph/textpatch.py); the reducer restores it, so the
state always holds whole texts.

The phase of a slot is read from its array lengths, never stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from langgraph.channels.delta import DeltaChannel

# typing_extensions' TypedDict, not typing's: pydantic (behind LangGraph Studio's schemas) refuses typing.TypedDict
# below Python 3.12.
from typing_extensions import TypedDict

from redraft.graph import textpatch

# A full snapshot of a delta channel every 32 updates: a read replays at most ~32 writes per channel, so the head of a
# 1,000-checkpoint thread reads about as fast as a short one's. Snapshots are compressed (graph/serde.py; ~150 bytes
# per revision in a 50-loop slot's snapshot), costing ~0.15x the text at 50 loops (256 cost 16x on long-thread reads).
SNAPSHOT_EVERY = 32

Phase = Literal["empty", "needs_draft", "ready_to_critique", "needs_revision", "done"]


class Slot(TypedDict):
    query: str
    draft: str | None
    critique: list[str]
    revision: list[str]
    variant: str
    sampling: dict[str, Any]


def apply_run_log_events(slots: list[Slot], writes: Sequence[Any]) -> list[Slot]:
    """Reducer for ``run_log``. Copy-on-write: the input list and its slots are never mutated; each slot a batch
    touches is copied once, so replaying n events costs O(n), not O(n^2).

    Deterministic and batching-invariant (events are applied one at a time, in order), as DeltaChannel requires.
    """
    slots = list(slots)
    fresh: set[int] = set()  # slots already copied in this call: mutate those copies in place
    for write in writes:
        for event in write if isinstance(write, list) else [write]:
            try:
                op = event["op"]
            except (KeyError, TypeError):
                raise ValueError(
                    "run_log takes events such as {'op': 'edit_revision', 'slot': 0, 'n': 1, 'text': ...}, not whole "
                    f"slots: got {str(event)[:80]!r}"
                ) from None
            if op == "open":
                fresh.add(len(slots))
                slots.append(
                    Slot(
                        query=event["query"],
                        draft=None,
                        critique=[],
                        revision=[],
                        variant=event["variant"],
                        sampling=dict(event.get("sampling") or {}),
                    )
                )
                continue
            if not slots:
                raise ValueError(f"run_log event {op!r} before any slot was opened")
            _check_addressing(event, slots)
            index = len(slots) - 1
            if index not in fresh:
                old = slots[index]
                slots[index] = {**old, "critique": list(old["critique"]), "revision": list(old["revision"])}
                fresh.add(index)
            slot = slots[index]
            if op == "draft":
                slot["draft"] = event["text"]
            elif op == "critique":
                slot["critique"].append(event["text"])
            elif op == "edit_critique":
                slot["critique"][-1] = event["text"]
            elif op == "edit_revision":
                slot["revision"][-1] = event["text"]
            elif op == "revision":
                slot["revision"].append(_revision_text(event, slot))
            else:
                raise ValueError(f"unknown run_log event {op!r}")
    return slots


def _revision_text(event: dict, slot: Slot) -> str:
    """A revision event's text: whole, or a patch against the slot's current text (graph/textpatch.py)."""
    if "patch" not in event:
        return event["text"]
    try:
        return textpatch.decode(current_text(slot), event["patch"])
    except ValueError as exc:
        raise ValueError(f"run_log revision #{event.get('n')} of slot {event.get('slot')}: {exc}") from None


_EXPECTED_N = {
    "critique": lambda s: len(s["critique"]) + 1,
    "revision": lambda s: len(s["revision"]) + 1,
    "edit_critique": lambda s: len(s["critique"]),
    "edit_revision": lambda s: len(s["revision"]),
}


def _check_addressing(event: dict, slots: list[Slot]) -> None:
    """Events name the slot and item they write; a mismatch means a bug or a bad edit, never silently applied."""
    if event.get("slot", len(slots) - 1) != len(slots) - 1:
        raise ValueError(f"run_log event for slot {event['slot']} but the current slot is {len(slots) - 1}")
    slot, op = slots[-1], event["op"]
    expected = _EXPECTED_N.get(op)
    if expected is not None and "n" in event and event["n"] != expected(slot):
        raise ValueError(f"run_log event {op} #{event['n']} does not fit slot {len(slots) - 1}")
    gap = len(slot["critique"]) - len(slot["revision"])
    legal = {
        "draft": slot["draft"] is None,
        "critique": slot["draft"] is not None and gap == 0,
        "revision": gap == 1,
        "edit_critique": gap == 1,
        "edit_revision": gap == 0 and bool(slot["revision"]),
    }
    if not legal.get(op, True):
        raise ValueError(f"run_log event {op} is not legal in slot {len(slots) - 1}'s phase")


def event(op: str, slot: int, n: int | None = None, **fields: Any) -> dict:
    """A run_log event. ``slot`` and ``n`` (1-based critique/revision number) make each write self-describing, so
    history can summarise a checkpoint from its writes without replaying the channel."""
    return {"op": op, "slot": slot, **({"n": n} if n is not None else {}), **fields}


def revision_event(slot: int, n: int, text: str, base: str | None, patch: bool = True) -> dict:
    """The event of revision ``n``: stored as a patch against ``base`` (the slot's current text) when ``patch`` and
    it pays (graph/textpatch.py), else whole. The reducer reads both."""
    encoded = textpatch.encode(base, text) if patch else None
    return event("revision", slot, n, patch=encoded) if encoded is not None else event("revision", slot, n, text=text)


def extend(items: list, writes: Sequence[Any]) -> list:
    """Append-only reducer for the small logs (scores, outcomes, history, truncations)."""
    out = list(items)
    for write in writes:
        out.extend(write if isinstance(write, list) else [write])
    return out


class RedraftState(TypedDict, total=False):
    run_log: Annotated[list[Slot], DeltaChannel(apply_run_log_events, snapshot_frequency=SNAPSHOT_EVERY)]
    # {"slot": i, "iteration": k, "similarity": s}: similarity of version k to version k-1 (version 0 = draft); and
    # {"slot": i, "iteration": k, "score": 0-10 | None, ...}: the critic's score of version k (nodes/scoring.py).
    scores: Annotated[list[dict], DeltaChannel(extend, snapshot_frequency=SNAPSHOT_EVERY)]
    # {"slot": i, "stop_reason": ..., "best": version index, "iterations": n, "similarity": last score, "note": ...}
    outcomes: Annotated[list[dict], DeltaChannel(extend, snapshot_frequency=SNAPSHOT_EVERY)]
    # Conversation history across queries: {"slot", "query", "answer"} per finished slot. (Not role/content dicts:
    # LangGraph would coerce those into message objects.)
    history: Annotated[list[dict], DeltaChannel(extend, snapshot_frequency=SNAPSHOT_EVERY)]
    # Model replies cut at max_tokens, and what the step did (REDRAFT_ON_TRUNCATION): {"slot", "node", "n" (critique/
    # revision number), "finish_reason": "length", "max_tokens", "action": "retried" | "accepted", "retry_max_tokens"}.
    # Empty in checkpoints written before it existed.
    truncations: Annotated[list[dict], DeltaChannel(extend, snapshot_frequency=SNAPSHOT_EVERY)]
    # Tokens and cost of every model call, one entry per call (nodes/usage.py, written by graph/budget.py's metering
    # of each step): {"slot", "node", "n" (critique/revision number), "model", "input_tokens", "output_tokens",
    # "estimated" (no usage reported: counted here), "cost" (USD, None when the price is unknown), "run" (the run
    # that made it)}. A fork's branch holds its own entries; a resumed run adds to them. Empty in older checkpoints.
    usage: Annotated[list[dict], DeltaChannel(extend, snapshot_frequency=SNAPSHOT_EVERY)]
    # Small per-query run settings: companion, similarity_threshold, max_loops, clear_history, mode, and the run
    # budgets max_tokens_per_run / max_cost_per_run (None: none).
    run_config: dict[str, Any]


# --- reading state -------------------------------------------------------------------------------------------------


def versions(slot: Slot) -> list[str]:
    """The draft followed by every revision: version 0 is the draft."""
    return ([slot["draft"]] if slot["draft"] is not None else []) + list(slot["revision"])


def current_text(slot: Slot) -> str | None:
    vs = versions(slot)
    return vs[-1] if vs else None


def outcome_for(state: dict, slot_index: int) -> dict | None:
    for outcome in reversed(state.get("outcomes") or []):
        if outcome["slot"] == slot_index:
            return outcome
    return None


# The last ``scores`` log split by slot_scores: (the log, its length, the slot, similarities, critic scores). A step
# and the view of its result read one log several times (similarities, the critic's scores), ~2,000 entries at
# ~1,000 checkpoints; logs are never changed in place (the reducers copy), so the same list object of the same
# length holds the same entries.
_last_split: tuple = ((), 0, None, {}, {})


def slot_scores(state: dict, slot_index: int) -> tuple[dict[int, float], dict[int, float | None]]:
    """A slot's similarity and critic-score entries of the ``scores`` log, by iteration (a later entry for the same
    iteration wins). The caller must not change the dicts."""
    global _last_split
    log = state.get("scores") or ()
    last = _last_split
    if last[0] is log and last[1] == len(log) and last[2] == slot_index:
        return last[3], last[4]
    similarity: dict = {}
    critic: dict = {}
    for s in log:
        if s["slot"] == slot_index:
            if "similarity" in s:
                similarity[s["iteration"]] = s["similarity"]
            if "score" in s:
                critic[s["iteration"]] = s["score"]
    _last_split = (log, len(log), slot_index, similarity, critic)
    return similarity, critic


def scores_for(state: dict, slot_index: int) -> list[float]:
    """Similarity per revision of a slot. A later record for the same iteration (an edited revision) wins. The
    critic's score entries ({"slot", "iteration", "score"}: nodes/scoring.py) share the log and are skipped."""
    by_iteration = slot_scores(state, slot_index)[0]
    return [by_iteration[k] for k in sorted(by_iteration)]


def phase_of(state: dict) -> Phase:
    """The phase of the thread's current slot, read from array lengths."""
    run_log = state.get("run_log") or []
    if not run_log:
        return "empty"
    slot = run_log[-1]
    if outcome_for(state, len(run_log) - 1) is not None:
        return "done"
    if slot["draft"] is None:
        return "needs_draft"
    pending = len(slot["critique"]) - len(slot["revision"])
    if pending == 0:
        return "ready_to_critique"
    if pending == 1:
        return "needs_revision"
    raise AssertionError(
        f"run_log invariant broken: {len(slot['critique'])} critiques, {len(slot['revision'])} revisions"
    )


def check_invariants(state: dict) -> None:
    """Raise AssertionError if any slot breaks ``0 <= len(critique) - len(revision) <= 1``."""
    for i, slot in enumerate(state.get("run_log") or []):
        assert set(slot) == {"query", "draft", "critique", "revision", "variant", "sampling"}, f"slot {i} keys"
        gap = len(slot["critique"]) - len(slot["revision"])
        assert 0 <= gap <= 1, f"slot {i}: {len(slot['critique'])} critiques vs {len(slot['revision'])} revisions"
        if slot["draft"] is None:
            assert not slot["critique"] and not slot["revision"], f"slot {i}: critique before draft"
