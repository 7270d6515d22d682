"""Property: every `history` entry agrees with `state_at` for its checkpoint, on every backend.

Hypothesis builds random sequences of steps, human gate decisions (approve, edit, replace), forks (critique or
revision edits, at the head, mid-thread, of a fork), replays and new queries, on auto and step-mode threads; then
each history entry is compared with the state at its id: phase, slot, critique and revision counts (the iteration),
stop reason, similarity and branch, and the head branch is exactly the live head's ancestry.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from redraft.errors import InvalidInputError, PhaseError
from redraft.graph import timetravel as tt
from redraft.graph.checkpointer import open_persistence
from redraft.graph.runner import Runner
from tests.conftest import fresh_database, make_settings, new_thread

OPS = ("step", "step", "resume", "refine", "fork", "fork", "replay", "query")


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def any_runner(request, tmp_path, stub):
    if request.param == "postgres":
        with fresh_database(request.getfixturevalue("pg_admin_url")) as url:
            settings = make_settings(url, stub)
            async with open_persistence(settings) as persistence:
                yield Runner(persistence, settings)
        return
    url = "memory" if request.param == "memory" else str(tmp_path / "prop.sqlite")
    settings = make_settings(url, stub)
    async with open_persistence(settings) as persistence:
        yield Runner(persistence, settings)


async def _step(runner: Runner, thread: str, data) -> None:
    status = await runner.status(thread)
    phase = status["phase"]
    if phase == "ready_to_critique":
        own = data.draw(st.booleans(), label="own critique")
        await runner.critique(thread, text="A human critique." if own else None)
    elif phase == "needs_revision":
        how = data.draw(st.sampled_from(["model", "edit", "replace"]), label="revise")
        if how == "edit":
            await runner.revise(thread, critique="An edited critique.")
        elif how == "replace":
            await runner.revise(thread, text="A human revision of the text.")
        else:
            await runner.revise(thread)
    elif phase == "needs_draft":
        await runner.resume(thread)


async def _resume(runner: Runner, thread: str, data) -> None:
    gate = (await runner.status(thread))["pending_gate"]
    decision = None
    if gate is not None:
        choices = [{"action": "approve"}, {"action": "replace", "text": f"Human {gate['gate']} text."}]
        if gate["gate"] == "revise":
            choices.append({"action": "edit", "critique": "Edited at the gate."})
        decision = data.draw(st.sampled_from(choices), label="decision")
    await runner.resume(thread, decision)


async def _fork(runner: Runner, thread: str, data) -> None:
    entries = (await tt.history(runner, thread, limit=200))["checkpoints"]
    at = data.draw(st.sampled_from([e["checkpoint_id"] for e in entries]), label="fork at")
    if data.draw(st.booleans(), label="edit critique"):
        await tt.fork(runner, thread, at, critique="A forked critique.")
    else:
        await tt.fork(runner, thread, at, revision="A forked revision, short.")


async def _replay(runner: Runner, thread: str, data) -> None:
    entries = (await tt.history(runner, thread, limit=200))["checkpoints"]
    at = data.draw(st.sampled_from([e["checkpoint_id"] for e in entries]), label="replay at")
    await tt.replay(runner, thread, at)


async def _check_history(runner: Runner, thread: str) -> None:
    page = await tt.history(runner, thread, limit=200)
    entries = page["checkpoints"]
    assert page["next_before"] is None
    head = await runner.status(thread)
    assert page["head"] == head["checkpoint_id"]  # the live head is the head branch's tip
    parents = {e["checkpoint_id"]: e["parent_id"] for e in entries}
    ancestry, node = set(), head["checkpoint_id"]
    while node is not None:
        ancestry.add(node)
        node = parents[node]
    for entry in entries:
        cid = entry["checkpoint_id"]
        state = await tt.state_at(runner, thread, cid)
        slot = state["slot"]
        expected = {
            "phase": state["phase"],
            "slot": state["slot_index"],
            "critiques": len(slot["critique"]) if slot else None,
            "revisions": len(slot["revision"]) if slot else None,
            "stop_reason": state["stop_reason"],
            "branch": state["branch"],
            "on_head_branch": cid in ancestry,
        }
        assert {k: entry[k] for k in expected} == expected, (entry, state)
        assert state["on_head_branch"] == entry["on_head_branch"]
        if entry["node"] == "revise":
            assert entry["similarity"] == pytest.approx(state["similarities"][-1])


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    companion=st.sampled_from(["generic", "summary"]),
    ops=st.lists(st.sampled_from(OPS), min_size=2, max_size=7),
)
async def test_every_history_entry_matches_state_at(any_runner, stub, data, companion, ops):
    stub.configure(draft_words=12, critique_words=3, changes=[3])
    runner, thread = any_runner, new_thread()
    queries = 0

    async def query() -> None:
        nonlocal queries
        queries += 1
        loops = data.draw(st.integers(1, 2), label="max_loops")
        await runner.refine(thread, companion, f"Question {queries}.", max_loops=loops, similarity_threshold=1.0)

    await query()
    for op in ops:
        try:
            if op == "query":
                await query()
            elif op == "step":
                await _step(runner, thread, data)
            elif op == "resume":
                await _resume(runner, thread, data)
            elif op == "refine":
                await runner.refine(thread, companion)
            elif op == "fork":
                await _fork(runner, thread, data)
            else:
                await _replay(runner, thread, data)
        except (PhaseError, InvalidInputError):
            pass  # not applicable in this phase: refused, and nothing changed
    await _check_history(runner, thread)
