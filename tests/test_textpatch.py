"""Revisions stored as patches against the text before them (graph/textpatch.py) read back as the whole texts."""

from __future__ import annotations

import random
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from redraft.graph import textpatch
from redraft.graph.state import apply_run_log_events, event, revision_event
from tests.conftest import new_thread, runner_with

PROSE = (
    "The committee met on Tuesday to review the proposal for the new library wing. Members raised questions about "
    "the budget, the timeline for construction and the effect on the reading rooms while work is under way. The "
    "architect answered most of them and promised a revised schedule by the end of the month, with a plan for "
    "keeping the children's section open throughout. "
) * 4


def _edited(text: str, n: int, seed: int) -> str:
    words = text.split(" ")
    rng = random.Random(seed)
    for i in rng.sample(range(len(words)), n):
        words[i] = rng.choice(["plainly", "the council", "however", "in March", "a survey"])
    return " ".join(words)


def test_a_close_revision_is_a_small_patch_and_a_rewrite_stays_whole():
    revised = _edited(PROSE, 12, 1)
    patch = textpatch.encode(PROSE, revised)
    assert patch is not None and len(patch) < 0.15 * len(revised)
    assert textpatch.decode(PROSE, patch) == revised  # remembered: this process made it
    textpatch._recent.clear()
    assert textpatch.decode(PROSE, patch) == revised  # inflated against its base, as another process does
    rewrite = " ".join(reversed(PROSE.split(" ")))[: len(PROSE)] + "Zebra quartz vexing jump."
    assert textpatch.encode(PROSE, "".join(random.Random(2).sample(rewrite, len(rewrite)))) is None
    assert textpatch.encode("Short base.", revised) is None  # too little to patch against
    assert textpatch.encode(None, revised) is None


def test_a_patch_refuses_another_base_and_damage_with_a_clear_error():
    patch = textpatch.encode(PROSE, _edited(PROSE, 5, 3))
    with pytest.raises(ValueError, match="made against another text"):
        textpatch.decode(PROSE + " ", patch)
    head, crc, frame = patch.split(":")
    for bad in (f"{head}:{crc}:{frame[:-8]}AAAAAAAA", f"{head}:{crc}:***", f"z9:{crc}:{frame}", "plain text"):
        with pytest.raises(ValueError):
            textpatch.decode(PROSE, bad)


@given(st.text(min_size=64, max_size=400), st.text(max_size=400), st.integers(0, 2**16))
def test_any_text_round_trips_against_any_base(base, tail, seed):
    text = base[: seed % (len(base) + 1)] + tail
    patch = textpatch.encode(base, text)
    assert patch is None or textpatch.decode(base, patch) == text
    textpatch._recent.clear()
    assert patch is None or textpatch.decode(base, patch) == text


def _slot_events(versions: list[str], patch: bool) -> list[dict]:
    events = [
        {"op": "open", "slot": 0, "query": "q", "variant": "generic", "sampling": {}},
        event("draft", 0, text=versions[0]),
    ]
    for n, (before, after) in enumerate(pairwise(versions), start=1):
        events.append(event("critique", 0, n, text=f"critique {n}"))
        events.append(revision_event(0, n, after, before, patch=patch))
    return events


def test_the_reducer_restores_patched_revisions_in_any_batching():
    versions = [PROSE]
    for k in range(8):
        versions.append(_edited(versions[-1], 10, k))
    patched, whole = _slot_events(versions, True), _slot_events(versions, False)
    assert sum("patch" in e for e in patched) == 8 and not any("patch" in e for e in whole)
    expected = apply_run_log_events([], [whole])
    assert expected[0]["revision"] == versions[1:]
    assert apply_run_log_events([], [patched]) == expected
    textpatch._recent.clear()  # as another process replays them
    assert apply_run_log_events([], [patched]) == expected
    state: list = []
    for e in patched:  # one event per write, as a replay from the thread's first checkpoint
        state = apply_run_log_events(state, [e])
    assert state == expected
    # a human edit of the last revision changes the base: a patch made against the old text is refused, not misread
    edited = [*patched[:-2], event("edit_revision", 0, 7, text=PROSE), *patched[-2:]]
    with pytest.raises(ValueError, match="revision #8 of slot 0: a revision patch made against another text"):
        apply_run_log_events([], [edited])


@pytest.mark.parametrize("compact", [True, False])
async def test_a_refine_stores_close_revisions_as_patches_unless_the_setting_is_off(db_url, stub, compact):
    stub.configure(draft_words=300, changes=[6])
    async with runner_with(db_url, stub, db_compact_layout=compact) as runner:
        thread = new_thread()
        result = await runner.refine(thread, "generic", "Write it.", max_loops=3, similarity_threshold=1.0)
        events = []
        async for snap in runner.graph.aget_state_history(runner.config(thread)):
            found = await runner.persistence.saver.aget_tuple(snap.config)
            for _, channel, value in found.pending_writes:
                if channel == "run_log":
                    events += value if isinstance(value, list) else [value]
        revisions = [e for e in events if e.get("op") == "revision"]
        assert len(revisions) == 3 == len(result["slot"]["revision"])
        assert all(("patch" in e) is compact and ("text" in e) is not compact for e in revisions)
        state = await runner.graph.aget_state(runner.config(thread))
        assert state.values["run_log"][0]["revision"] == result["slot"]["revision"]
        assert all(len(t) > 1000 for t in result["slot"]["revision"])
