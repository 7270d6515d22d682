"""Human gates: a decision is never lost or replayed, even across model errors, and never ignored in auto mode.
Model errors at every step (draft, critique, revise; step and auto mode) leave the thread ending exactly as it
would have without them."""

from __future__ import annotations

import pytest

from redraft.errors import ContextOverflowError, InvalidInputError, ModelError
from redraft.graph import timetravel as tt
from tests.conftest import new_thread

DOWN = {"status": 500}  # one failed model call (the tests run with max_retries=0)


async def _at_revise_gate(runner, stub) -> str:
    thread = new_thread()
    stub.configure(changes=[30])
    await runner.refine(thread, "summary", "Summarise the meeting notes.")
    state = await runner.resume(thread, {"action": "approve"})
    assert state["pending_gate"]["gate"] == "revise"
    return thread


async def test_a_new_decision_after_a_model_error_is_the_one_used(runner, stub):
    """The issue's case: resume(edit) fails at the model, then resume(replace) must not revise the first edit."""
    thread = await _at_revise_gate(runner, stub)
    model_critique = (await runner.status(thread))["slot"]["critique"][-1]
    stub.fail({**DOWN, "node": "revise"})
    with pytest.raises(ModelError):
        await runner.resume(thread, {"action": "edit", "critique": "FIRST DECISION: cut it."})
    state = await runner.status(thread)
    assert state["pending_gate"]["gate"] == "revise" and state["slot"]["critique"] == [model_critique]
    state = await runner.resume(thread, {"action": "replace", "text": "SECOND DECISION"})
    assert state["slot"]["revision"] == ["SECOND DECISION"]
    assert state["slot"]["critique"] == [model_critique]  # the failed attempt's edit was never applied
    assert len(stub.prompts("revise")) == 1  # only the failed call: the human's revision needs no model
    assert state["pending_gate"]["gate"] == "critique"


async def test_the_step_tools_take_the_new_decision_after_a_model_error(runner, stub):
    thread = new_thread()
    await runner.draft(thread, "generic", "Step me.")
    stub.fail({**DOWN, "node": "critique"})
    with pytest.raises(ModelError):
        await runner.critique(thread)
    state = await runner.critique(thread, text="Round 1: my own critique.")
    assert state["slot"]["critique"] == ["Round 1: my own critique."]
    stub.fail({**DOWN, "node": "revise"})
    with pytest.raises(ModelError):
        await runner.revise(thread)
    state = await runner.revise(thread, critique="Round 1: my corrected critique.")
    assert state["slot"]["critique"] == ["Round 1: my corrected critique."]
    assert stub.prompts("revise")[-1][-1]["content"].endswith("Critique:\nRound 1: my corrected critique.")


async def test_a_human_gets_past_every_step_while_the_model_is_down(runner, stub):
    thread = new_thread()
    await runner.refine(thread, "summary", "Summarise the meeting notes.", max_loops=1)
    stub.fail(*[DOWN] * 20)
    with pytest.raises(ModelError):
        await runner.resume(thread)  # approve: the model is down
    state = await runner.resume(thread, {"action": "replace", "text": "Round 1: shorter, please."})
    assert state["slot"]["critique"] == ["Round 1: shorter, please."] and state["pending_gate"]["gate"] == "revise"
    with pytest.raises(ModelError):
        await runner.resume(thread, {"action": "edit", "critique": "Round 1: much shorter."})
    state = await runner.resume(thread, {"action": "replace", "text": "The short summary, by hand."})
    assert state["phase"] == "done" and state["stop_reason"] == "max_loops"
    assert state["final_text"] == "The short summary, by hand."
    assert len(stub.faults) == 18  # the two approvals reached the model; the human steps did not


async def test_a_decision_on_an_auto_thread_runs_the_gated_step(runner, stub):
    thread = new_thread()
    stub.configure(changes=[30])
    state = await runner.draft(thread, "generic", "Explain gates.", max_loops=2, similarity_threshold=1.0)
    assert state["pending_gate"]["gate"] == "critique" and state["run_config"]["mode"] == "auto"
    state = await runner.resume(thread, {"action": "replace", "text": "Round 1: a human critique."})
    assert state["phase"] == "done" and state["slot"]["critique"][0] == "Round 1: a human critique."
    assert stub.prompts("revise")[0][-1]["content"].endswith("Critique:\nRound 1: a human critique.")
    assert len(stub.prompts("critique")) == 1  # round 2 only: round 1 was the human's

    thread = new_thread()
    await runner.draft(thread, "generic", "Explain gates.", max_loops=2, similarity_threshold=1.0)
    state = await runner.critique(thread)
    assert state["pending_gate"]["gate"] == "revise"
    state = await runner.resume(thread, {"action": "edit", "critique": "Round 1: corrected by a human."})
    assert state["phase"] == "done" and state["slot"]["critique"][0] == "Round 1: corrected by a human."


async def test_bad_or_unwanted_decisions_are_refused_and_change_nothing(runner, stub):
    thread = new_thread()
    stub.fail({**DOWN, "node": "critique"})
    with pytest.raises(ModelError):
        await runner.refine(thread, "generic", "Crash me.")  # auto mode: stopped by an error, not at a gate
    before = await runner.snapshot(thread)
    assert before.next == ("critique",)
    with pytest.raises(InvalidInputError, match="not waiting for a decision"):
        await runner.resume(thread, {"action": "replace", "text": "ignored?"})
    after = await runner.snapshot(thread)
    assert after.config == before.config and after.values == before.values
    state = await runner.resume(thread)
    assert state["phase"] == "done" and "ignored?" not in state["slot"]["critique"]

    gated = await _at_revise_gate(runner, stub)
    before = await runner.snapshot(gated)
    for bad in (
        {"action": "replace", "text": "x" * (runner.settings.max_text_chars + 1)},
        {"action": "edit", "critique": "nul\x00byte"},
        {"action": "replace", "text": "  "},
        {"action": "rewrite", "text": "no such action"},
    ):
        with pytest.raises(InvalidInputError):
            await runner.resume(gated, bad)
    after = await runner.snapshot(gated)
    assert after.config == before.config and after.values == before.values
    assert (await runner.status(gated))["pending_gate"]["gate"] == "revise"


async def test_a_draft_that_failed_is_retried_by_the_same_call(runner, stub):
    thread = new_thread()
    stub.fail({**DOWN, "node": "draft"})
    with pytest.raises(ModelError):
        await runner.draft(thread, "generic", "Retry me.", max_loops=2)
    state = await runner.draft(thread, "generic", "Retry me.", max_loops=2)
    assert state["slots"] == 1 and state["phase"] == "ready_to_critique" and state["pending_gate"]["gate"] == "critique"


async def test_a_query_whose_draft_failed_can_be_replaced(runner, stub):
    """A draft the model refuses for good (a query over its context window) must not block the thread: a different
    query starts a new slot; the failed one stays in the run_log, draftless."""
    thread = new_thread()
    stub.fail(*[{"context_overflow": True, "node": "draft"}] * 2)
    with pytest.raises(ContextOverflowError):
        await runner.refine(thread, "generic", "A query far too long for the model.")
    assert (await runner.status(thread))["phase"] == "needs_draft"
    with pytest.raises(ContextOverflowError):  # the same query again is refused again
        await runner.refine(thread, "generic")
    done = await runner.refine(thread, "generic", "A shorter query.", max_loops=2)
    assert done["phase"] == "done" and done["slots"] == 2 and done["slot"]["query"] == "A shorter query."
    run_log = (await runner.snapshot(thread)).values["run_log"]
    assert run_log[0]["draft"] is None and run_log[0]["critique"] == []


# --- model errors at every step: the thread ends as it would have without them --------------------------------------

STEP_DECISIONS = {
    ("critique", 1): {"action": "replace", "text": "Round 1: a human critique."},
    ("revise", 1): {"action": "approve"},
    ("critique", 2): {"action": "approve"},
    ("revise", 2): {"action": "edit", "critique": "Round 2: a corrected critique."},
}
# What the human tries first at the gate whose model call fails: a model step, and not the decision it then makes
FIRST_TRY = {"critique": {"action": "approve"}, "revise": {"action": "edit", "critique": "A first thought, dropped."}}


async def _drive(runner, companion: str, fault: str | None) -> tuple[str, dict]:
    """Draft, then answer every gate (step mode) or give one critique and let the run finish (auto mode). With a
    fault, the first model call of that node fails; the client then makes the call it meant to make."""
    thread = new_thread()
    failed = False

    async def call(make, first=None):
        nonlocal failed
        try:
            return await (first or make)()
        except ModelError:
            assert not failed, "only one call may fail"
            failed = True
            return await make()

    if fault:
        runner.stub.fail({**DOWN, "node": fault})
    args = {"max_loops": 2, "similarity_threshold": 1.0}
    state = await call(lambda: runner.draft(thread, companion, "Summarise the meeting notes.", **args))
    if companion == "generic":  # auto mode: a human critique, then the run goes on by itself
        # the human critique needs no model; a later step of the run may fail, and resume carries on from there
        state = await call(
            lambda: runner.resume(thread), lambda: runner.resume(thread, STEP_DECISIONS[("critique", 1)])
        )
        while state["phase"] != "done":
            state = await call(lambda: runner.resume(thread))
    else:
        while state["phase"] != "done":
            gate = state["pending_gate"]
            key = (gate["gate"], gate["round"])

            decide = lambda key=key: runner.resume(thread, STEP_DECISIONS[key])  # noqa: E731
            try_first = lambda gate=gate: runner.resume(thread, FIRST_TRY[gate["gate"]])  # noqa: E731
            first = try_first if fault == gate["gate"] and not failed else None
            state = await call(decide, first)
    assert failed == bool(fault)
    return thread, state


def _comparable(state: dict) -> dict:
    out = {k: v for k, v in state.items() if k not in ("thread_id", "checkpoint_id", "duration_s")}
    # the calls and their totals are the same; how they split into runs depends on where the error stopped one
    out["usage"] = {k: v for k, v in (state.get("usage") or {}).items() if k != "run"}
    return out


async def _shape(runner, thread: str) -> list[tuple]:
    entries = (await tt.history(runner, thread, limit=200))["checkpoints"]
    keys = ("node", "phase", "slot", "critiques", "revisions", "similarity", "stop_reason", "edited", "step")
    return [tuple(e[k] for k in keys) for e in entries]


@pytest.mark.parametrize("companion", ["summary", "generic"], ids=["step", "auto"])
@pytest.mark.parametrize("fault", ["draft", "critique", "revise"])
async def test_a_model_error_at_any_step_changes_nothing_in_the_end(runner, stub, companion, fault):
    stub.configure(changes=[30])
    runner.stub = stub
    reference, expected = await _drive(runner, companion, None)
    assert expected["stop_reason"] == "max_loops"
    assert expected["slot"]["critique"][0] == "Round 1: a human critique."
    thread, state = await _drive(runner, companion, fault)
    assert _comparable(state) == _comparable(expected)
    assert await _shape(runner, thread) == await _shape(runner, reference)
