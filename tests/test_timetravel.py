"""Time travel and human-in-the-loop on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from redraft.errors import CheckpointNotFoundError, ConflictError, InvalidInputError, PhaseError
from redraft.graph import timetravel as tt
from redraft.graph.state import phase_of
from tests.conftest import new_thread


async def _finished_thread(runner, stub, loops=3) -> str:
    stub.configure(changes=[30])
    thread = new_thread()
    await runner.refine(thread, "generic", "Time travel me.", max_loops=loops, similarity_threshold=1.0)
    return thread


async def test_history_matches_the_state_at_every_checkpoint(runner, stub):
    thread = await _finished_thread(runner, stub)
    page = await tt.history(runner, thread, limit=200)
    entries = page["checkpoints"]
    assert len(entries) == 9 and page["next_before"] is None  # start, input, draft, 3 x (critique, revise)
    assert [e["node"] for e in reversed(entries)] == ["start", "input", "draft"] + ["critique", "revise"] * 3
    assert [e["step"] for e in entries] == sorted((e["step"] for e in entries), reverse=True)
    for entry in entries:
        state = (await runner.snapshot(thread, entry["checkpoint_id"])).values
        assert entry["phase"] == phase_of(state)
        if state.get("run_log"):
            slot = state["run_log"][-1]
            assert (entry["critiques"], entry["revisions"]) == (len(slot["critique"]), len(slot["revision"]))
        assert entry["on_head_branch"] and entry["branch"] == page["head"]
    assert entries[0]["stop_reason"] == "max_loops"
    status = await runner.status(thread)
    assert [e["similarity"] for e in reversed(entries) if e["node"] == "revise"] == status["similarities"]

    pages, before = [], None
    while True:
        page = await tt.history(runner, thread, limit=4, before=before)
        pages.append([e["checkpoint_id"] for e in page["checkpoints"]])
        before = page["next_before"]
        if before is None:
            break
    assert [len(p) for p in pages] == [4, 4, 1]
    assert [cid for p in pages for cid in p] == [e["checkpoint_id"] for e in entries]


async def test_fork_with_edited_critique_keeps_the_original_branch(runner, stub):
    thread = await _finished_thread(runner, stub)
    original = await runner.status(thread)
    entries = (await tt.history(runner, thread, limit=50))["checkpoints"]
    at = next(e for e in entries if e["node"] == "critique" and e["critiques"] == 2)
    forked = await tt.fork(runner, thread, at["checkpoint_id"], critique="Round 2: a human's better critique.")
    assert forked["phase"] == "needs_revision" and forked["next"] == ["revise"]
    assert forked["slot"]["critique"][-1] == "Round 2: a human's better critique."
    stub.requests.clear()
    final = await runner.refine(thread, "generic")
    assert final["stop_reason"] == "max_loops"
    assert stub.prompts("revise")[0][-1]["content"].endswith("Critique:\nRound 2: a human's better critique.")
    # the original branch is intact and readable
    before_fork = await tt.state_at(runner, thread, at["checkpoint_id"])
    assert before_fork["slot"]["critique"] == original["slot"]["critique"][:2]
    assert (await tt.state_at(runner, thread, entries[0]["checkpoint_id"]))["slot"] == original["slot"]
    history = (await tt.history(runner, thread, limit=50))["checkpoints"]
    fork_entry = next(e for e in history if e["source"] == "update")
    assert fork_entry["edited"] and fork_entry["phase"] == "needs_revision" and fork_entry["on_head_branch"]
    old_tip = next(e for e in history if e["checkpoint_id"] == entries[0]["checkpoint_id"])
    assert not old_tip["on_head_branch"]


async def test_fork_with_edited_revision_rescores_it(runner, stub):
    thread = await _finished_thread(runner, stub)
    entries = (await tt.history(runner, thread, limit=50))["checkpoints"]
    at = next(e for e in entries if e["node"] == "revise" and e["revisions"] == 1)
    draft = (await runner.status(thread))["slot"]["draft"]
    forked = await tt.fork(runner, thread, at["checkpoint_id"], revision=draft)  # identical to the draft
    assert forked["slot"]["revision"] == [draft] and forked["similarities"] == [1.0]
    assert forked["phase"] == "ready_to_critique"


async def test_replay_reruns_from_a_checkpoint_on_a_new_branch(runner, stub):
    thread = await _finished_thread(runner, stub, loops=2)
    original = await runner.status(thread)
    entries = (await tt.history(runner, thread, limit=50))["checkpoints"]
    at = next(e for e in entries if e["node"] == "draft")
    stub.requests.clear()
    stub.configure(changes=[0])  # the replayed revision is identical: converges at once
    replayed = await tt.replay(runner, thread, at["checkpoint_id"])
    assert replayed["stop_reason"] == "converged" and len(replayed["slot"]["revision"]) == 1
    assert [r["node"] for r in stub.requests] == ["critique", "revise"]
    assert (await tt.state_at(runner, thread, entries[0]["checkpoint_id"]))["slot"] == original["slot"]


async def test_diff_between_versions(runner, stub):
    thread = await _finished_thread(runner, stub, loops=2)
    status = await runner.status(thread)
    result = await tt.diff(runner, thread, 0, 1)
    assert result["similarity"] == pytest.approx(status["similarities"][0])
    assert result["diff"].startswith("--- version 0\n+++ version 1")
    assert sum(1 for line in result["diff"].splitlines() if line.startswith("+") and not line.startswith("+++")) == 30
    with pytest.raises(InvalidInputError, match=r"versions 0\.\.2"):
        await tt.diff(runner, thread, 0, 3)


async def test_bad_ids_and_running_threads_change_nothing(runner, stub):
    thread = await _finished_thread(runner, stub, loops=2)
    other = await _finished_thread(runner, stub, loops=1)
    foreign = (await tt.history(runner, other, limit=1))["checkpoints"][0]["checkpoint_id"]
    before = (await tt.history(runner, thread, limit=200))["checkpoints"]
    for bad in ("nope", "", foreign, "x" * 500):
        with pytest.raises(CheckpointNotFoundError):
            await tt.state_at(runner, thread, bad)
        with pytest.raises(CheckpointNotFoundError):
            await tt.fork(runner, thread, bad, critique="x")
        with pytest.raises(CheckpointNotFoundError):
            await tt.replay(runner, thread, bad)
    with pytest.raises(CheckpointNotFoundError):
        await tt.history(runner, thread, before=foreign)
    at_done = before[0]["checkpoint_id"]
    with pytest.raises(PhaseError):
        await tt.fork(runner, thread, at_done, critique="too late")
    at_revise = next(e for e in before if e["node"] == "revise" and not e["stop_reason"])["checkpoint_id"]
    with pytest.raises(PhaseError, match="no pending critique"):
        await tt.fork(runner, thread, at_revise, critique="no critique is pending here")
    at_critique = next(e for e in before if e["node"] == "critique")["checkpoint_id"]
    async with runner.persistence.db.thread_lock(thread):  # a step is running on the thread
        with pytest.raises(ConflictError):
            await tt.fork(runner, thread, at_critique, critique="while running")
        with pytest.raises(ConflictError):
            await runner.refine(thread, "generic", "A new query while running.")
    assert (await tt.history(runner, thread, limit=200))["checkpoints"] == before


async def test_step_mode_gates_approve_edit_replace(runner, stub):
    """The `summary` companion runs in step mode: refine stops before every critique and revision."""
    thread = new_thread()
    stub.configure(changes=[30])
    state = await runner.refine(thread, "summary", "Summarise the meeting notes.")
    assert state["pending_gate"]["gate"] == "critique" and state["phase"] == "ready_to_critique"
    assert [r["node"] for r in stub.requests] == ["draft"]  # nothing runs before approval
    with pytest.raises(PhaseError, match="waiting for a human decision"):
        await runner.refine(thread, "summary")
    with pytest.raises(InvalidInputError):
        await runner.resume(thread, {"action": "edit", "critique": "edit is not valid before a critique"})
    assert (await runner.status(thread))["pending_gate"]["gate"] == "critique"

    state = await runner.resume(thread, {"action": "approve"})
    assert state["pending_gate"]["gate"] == "revise"
    assert state["pending_gate"]["critique"] == state["slot"]["critique"][-1]
    state = await runner.resume(thread, {"action": "edit", "critique": "Round 1: cut the second paragraph."})
    assert state["slot"]["critique"] == ["Round 1: cut the second paragraph."]
    assert stub.prompts("revise")[-1][-1]["content"].endswith("Critique:\nRound 1: cut the second paragraph.")
    assert state["pending_gate"]["gate"] == "critique"
    state = await runner.resume(thread, {"action": "replace", "text": "Round 2: my own critique."})
    assert state["slot"]["critique"][-1] == "Round 2: my own critique." and len(stub.prompts("critique")) == 1
    state = await runner.resume(thread, {"action": "replace", "text": "The final summary, written by hand."})
    assert state["slot"]["revision"][-1] == "The final summary, written by hand."
    while state["phase"] != "done":
        state = await runner.resume(thread)
    assert state["stop_reason"] == "max_loops" and len(state["slot"]["revision"]) == 3
    with pytest.raises(PhaseError, match="Nothing to resume"):
        await runner.resume(thread)


async def _assert_history_matches_state(runner, thread) -> list[dict]:
    entries = (await tt.history(runner, thread, limit=200))["checkpoints"]
    for entry in entries:
        state = await tt.state_at(runner, thread, entry["checkpoint_id"])
        slot = state["slot"]
        assert (entry["phase"], entry["slot"], entry["stop_reason"], entry["branch"]) == (
            state["phase"],
            state["slot_index"],
            state["stop_reason"],
            state["branch"],
        ), entry
        if slot:
            assert (entry["critiques"], entry["revisions"]) == (len(slot["critique"]), len(slot["revision"])), entry
    return entries


async def test_history_labels_forks_at_the_head_replays_and_second_queries_as_state_at_does(runner, stub):
    stub.configure(changes=[30])
    thread = new_thread()
    await runner.draft(thread, "generic", "Fork me at the head.")
    head = (await runner.critique(thread))["checkpoint_id"]
    await tt.fork(runner, thread, head, critique="Round 1: a human's critique.")  # LangGraph stores it on the parent
    entries = await _assert_history_matches_state(runner, thread)
    assert entries[0]["source"] == "update" and entries[0]["node"] == "critique" and entries[0]["edited"]
    assert entries[0]["phase"] == "needs_revision" and (entries[0]["critiques"], entries[0]["revisions"]) == (1, 0)

    await runner.refine(thread, "generic")
    await runner.refine(thread, "generic", "A second query.", max_loops=1)
    entries = await _assert_history_matches_state(runner, thread)
    second_input = next(e for e in entries if e["source"] == "input" and e["parent_id"])
    assert second_input["phase"] == "done" and second_input["slot"] == 0 and second_input["node"] == "start"

    drafted = next(e for e in entries if e["node"] == "draft" and e["slot"] == 1)
    await tt.replay(runner, thread, drafted["checkpoint_id"])
    entries = await _assert_history_matches_state(runner, thread)
    copy = next(e for e in entries if e["source"] == "fork")
    assert copy["node"] == "replay" and copy["phase"] == "ready_to_critique" and copy["critiques"] == 0
    # so a fork there is refused for the reason the state gives, not the label
    with pytest.raises(PhaseError, match="no pending critique"):
        await tt.fork(runner, thread, copy["checkpoint_id"], critique="x")


@pytest.fixture
def slow_replica(monkeypatch):
    """This process becomes a replica whose clock is an hour behind, with a fresh checkpoint-id clock."""
    from langgraph.checkpoint.base import id as ids

    real = time.time_ns
    monkeypatch.setattr(ids, "time", SimpleNamespace(time_ns=lambda: real() - 3600 * 10**9))
    monkeypatch.setattr(ids, "_last_v6_timestamp", None)


async def test_a_fork_on_a_replica_whose_clock_is_behind_becomes_the_head(runner, stub, request):
    thread = await _finished_thread(runner, stub)
    entries = (await tt.history(runner, thread, limit=50))["checkpoints"]
    old_head = entries[0]["checkpoint_id"]
    at = next(e for e in entries if e["node"] == "critique" and e["critiques"] == 2)
    request.getfixturevalue("slow_replica")
    forked = await tt.fork(runner, thread, at["checkpoint_id"], critique="Round 2: from the slow replica.")
    assert forked["checkpoint_id"] > old_head  # sorts after the head, whatever the clock said
    assert forked["phase"] == "needs_revision" and forked["slot"]["critique"][-1] == "Round 2: from the slow replica."
    page = await tt.history(runner, thread, limit=50)
    assert page["head"] == forked["checkpoint_id"] == page["checkpoints"][0]["checkpoint_id"]
    final = await runner.refine(thread, "generic")  # the run continues from the fork, still on the slow clock
    assert final["slot"]["critique"][1] == "Round 2: from the slow replica." and final["stop_reason"] == "max_loops"
    assert (await runner.status(thread))["checkpoint_id"] == final["checkpoint_id"]
    await _assert_history_matches_state(runner, thread)


async def test_a_replay_on_a_replica_whose_clock_is_behind_becomes_the_head(runner, stub, request):
    thread = await _finished_thread(runner, stub, loops=2)
    entries = (await tt.history(runner, thread, limit=50))["checkpoints"]
    at = next(e for e in entries if e["node"] == "draft")
    request.getfixturevalue("slow_replica")
    stub.configure(changes=[0])  # the replayed revision converges at once
    replayed = await tt.replay(runner, thread, at["checkpoint_id"])
    assert replayed["stop_reason"] == "converged"
    status = await runner.status(thread)
    assert status["checkpoint_id"] == replayed["checkpoint_id"] and status["stop_reason"] == "converged"
    assert (await tt.history(runner, thread, limit=1))["head"] == replayed["checkpoint_id"]


def test_ids_made_after_order_after_sort_after_the_given_id(monkeypatch):
    from langgraph.checkpoint.base import id as ids
    from langgraph.checkpoint.base.id import uuid6

    from redraft.graph.clock import order_after

    # the process's id clock goes far ahead here: put it back afterwards, or every later test in this process makes
    # checkpoints "from the future" (retention's age cutoffs then find nothing old)
    monkeypatch.setattr(ids, "_last_v6_timestamp", ids._last_v6_timestamp)

    future = str(uuid6(clock_seq=0)).replace(str(uuid6(clock_seq=0))[:4], "ffff", 1)  # a controlled id, far ahead
    order_after(future)
    assert str(uuid6(clock_seq=-2)) > future and str(uuid6(clock_seq=5)) > future
    order_after("not-a-uuid")  # ignored
    order_after(None)
