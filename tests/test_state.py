"""Properties of the run_log reducer that DeltaChannel relies on, checked with Hypothesis."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from redraft.graph.state import apply_run_log_events, check_invariants, event, phase_of

TEXT = st.text(min_size=1, max_size=20)


@st.composite
def event_stream(draw) -> list[dict]:
    """A valid sequence of run_log events: slots opened, drafted, critiqued and revised in a legal order."""
    events, slots = [], []
    for _ in range(draw(st.integers(1, 40))):
        if not slots or (slots[-1]["draft"] and draw(st.booleans()) and draw(st.booleans())):
            slots.append({"draft": False, "c": 0, "r": 0})
            events.append({"op": "open", "slot": len(slots) - 1, "query": draw(TEXT), "variant": "g", "sampling": {}})
            continue
        s, i = slots[-1], len(slots) - 1
        if not s["draft"]:
            s["draft"] = True
            events.append(event("draft", i, text=draw(TEXT)))
        elif s["c"] == s["r"]:
            s["c"] += 1
            events.append(event("critique", i, s["c"], text=draw(TEXT)))
        elif draw(st.booleans()):
            events.append(event("edit_critique", i, s["c"], text=draw(TEXT)))
        else:
            s["r"] += 1
            events.append(event("revision", i, s["r"], text=draw(TEXT)))
    return events


@settings(max_examples=200, deadline=None)
@given(event_stream(), st.data())
def test_reducer_is_batching_invariant_and_pure(events, data):
    cut = data.draw(st.integers(0, len(events)))
    whole = apply_run_log_events([], [events])
    first = apply_run_log_events([], [events[:cut]])
    snapshot = copy.deepcopy(first)
    split = apply_run_log_events(first, [events[cut:]])
    assert split == whole
    assert first == snapshot  # the input was not mutated
    one_by_one = []
    for e in events:
        one_by_one = apply_run_log_events(one_by_one, [e])
    assert one_by_one == whole
    check_invariants({"run_log": whole})
    assert phase_of({"run_log": whole}) in ("needs_draft", "ready_to_critique", "needs_revision")


def test_misaddressed_events_are_refused():
    slots = apply_run_log_events([], [[{"op": "open", "slot": 0, "query": "q", "variant": "g", "sampling": {}}]])
    slots = apply_run_log_events(slots, [[event("draft", 0, text="d")]])
    for bad in (
        event("critique", 1, 1, text="x"),
        event("critique", 0, 2, text="x"),
        event("revision", 0, 1, text="x"),
    ):
        try:
            apply_run_log_events(slots, [[bad]])
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad}")


_score_entry = st.fixed_dictionaries(
    {"slot": st.integers(0, 2), "iteration": st.integers(0, 4)},
    optional={"similarity": st.floats(0, 1), "score": st.one_of(st.none(), st.floats(0, 10))},
)


@given(st.lists(st.tuples(st.lists(_score_entry, max_size=6), st.integers(0, 2), st.booleans()), max_size=8))
def test_a_slot_s_scores_are_their_plain_definition_across_calls(steps):
    """``scores_for`` and ``critic_scores_for`` (one pass, remembered for the same log object) equal their plain
    definitions, call after call, as a log grows (each step a new list, as the reducers make) or is read again."""
    from redraft.graph.convergence import critic_scores_for
    from redraft.graph.state import scores_for

    log: list[dict] = []
    for added, slot, again in steps:
        log = [*log, *added] if added or not again else log
        state = {"scores": log}
        for _ in range(2 if again else 1):
            similarity = {s["iteration"]: s["similarity"] for s in log if s["slot"] == slot and "similarity" in s}
            critic = {s["iteration"]: s["score"] for s in log if s["slot"] == slot and "score" in s}
            assert scores_for(state, slot) == [similarity[k] for k in sorted(similarity)]
            got = critic_scores_for(state, slot)
            assert got == critic
            got[99] = 1.0  # the caller's own copy
            assert 99 not in critic_scores_for(state, slot)
