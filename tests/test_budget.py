"""Run budgets (issue 21 item 3): max_tokens_per_run and max_cost_per_run stop a run with stop_reason "budget" on the
exact step that reaches them, keeping the last finished version, writing nothing half-way; a step is never started
once the run has used its budget. Real langchain-openai client, the HTTP stub reporting a fixed usage per call."""

from __future__ import annotations

import pytest
from langgraph.runtime import Runtime

from redraft.errors import InvalidInputError, ModelError
from redraft.graph.budget import metered
from redraft.graph.checkpointer import open_persistence
from redraft.graph.runner import Runner
from redraft.graph.state import check_invariants, phase_of
from redraft.graph.timetravel import history
from redraft.nodes.context import RedraftContext
from tests.conftest import make_settings, new_thread

PER_CALL = {"prompt_tokens": 10, "completion_tokens": 5}  # 15 tokens a call
# 10 x $500/M + 5 x $1000/M = $0.01 a call
PRICED = {"stub-model": {"input": 500.0, "output": 1000.0}}


@pytest.fixture
async def runner(tmp_path, stub):
    stub.configure(usage=PER_CALL, changes=[5])  # revisions never converge
    settings = make_settings(str(tmp_path / "b.sqlite"), stub, prices=PRICED)
    async with open_persistence(settings) as p:
        yield Runner(p, settings)


@pytest.mark.parametrize(
    ("budget", "calls", "critiques", "revisions", "stopped_by"),
    [
        (45, 3, 1, 1, "revise"),  # draft 15, critique 30, revise 45 >= 45: stops in the revision step
        (50, 4, 1, 1, "critique"),  # ... critique 60 >= 50: stops in the second critique, never revised
        (15, 1, 0, 0, "draft"),  # the draft alone reaches it: the draft is the answer
    ],
)
async def test_token_budget_stops_on_the_exact_step(runner, stub, budget, calls, critiques, revisions, stopped_by):
    thread = new_thread()
    done = await runner.refine(
        thread, "generic", "Mind the budget.", max_loops=5, similarity_threshold=1.0, max_tokens_per_run=budget
    )
    assert len(stub.requests) == calls and done["stop_reason"] == "budget" and done["phase"] == "done"
    slot = done["slot"]
    assert (len(slot["critique"]), len(slot["revision"])) == (critiques, revisions)
    newest = slot["revision"][-1] if slot["revision"] else slot["draft"]
    assert done["best_version"] == revisions and done["final_text"] == newest  # the last finished version
    assert done["usage"]["run"]["total_tokens"] == 15 * calls and done["run_config"]["max_tokens_per_run"] == budget
    snap = await runner.snapshot(thread)
    check_invariants(snap.values)
    outcome = snap.values["outcomes"][-1]
    assert outcome["budget"] == {"max_tokens_per_run": budget, "total_tokens": 15 * calls, "cost": 0.01 * calls}
    if stopped_by == "critique":  # the critique that crossed it is kept as the outcome's note, not in the slot
        assert outcome["note"].startswith("Round 2")
    # the stop was written by the step that reached the budget, in its own checkpoint: nothing after it
    page = await history(runner, thread, limit=100)
    assert page["checkpoints"][0]["node"] == stopped_by and page["checkpoints"][0]["stop_reason"] == "budget"
    assert [e["node"] for e in page["checkpoints"]] == [
        *reversed(["draft", "critique", "revise", "critique"][:calls]),
        "input",
        "start",
    ]
    again = await runner.refine(thread, "generic", "A new query after a budget stop.", max_loops=1)
    assert again["phase"] == "done" and again["stop_reason"] != "budget"  # settings' default: no budget


async def test_cost_budget_stops_on_the_exact_step(runner, stub):
    done = await runner.refine(
        new_thread(), "generic", "Mind the cost.", max_loops=5, similarity_threshold=1.0, max_cost_per_run=0.025
    )
    # $0.01 a call: 0.01, 0.02, 0.03 >= 0.025 in the third call (the first revision)
    assert done["stop_reason"] == "budget" and len(stub.requests) == 3
    assert done["usage"]["run"]["cost"] == pytest.approx(0.03) and done["best_version"] == 1


async def test_each_run_has_its_own_budget(runner, stub):
    """A budget is per run: a resumed run counts its own calls only."""
    thread = new_thread()
    stub.fail({"status": 500, "node": "revise"})
    with pytest.raises(ModelError):  # the first revision's model call fails
        await runner.refine(
            thread, "generic", "Two runs.", max_loops=5, similarity_threshold=1.0, max_tokens_per_run=40
        )
    # the first run used 30 tokens (draft, critique); the resumed run gets 40 of its own: revise 15, critique 30,
    # revise 45 >= 40
    done = await runner.resume(thread)
    assert done["stop_reason"] == "budget" and done["usage"]["run"]["total_tokens"] == 45
    assert done["usage"]["query"]["total_tokens"] == 75 and len(done["slot"]["revision"]) == 2


async def test_budgets_from_settings_and_refused_when_unusable(tmp_path, stub):
    stub.configure(usage=PER_CALL, changes=[5])
    settings = make_settings(str(tmp_path / "s.sqlite"), stub, max_tokens_per_run=30)
    async with open_persistence(settings) as p:
        runner = Runner(p, settings)
        done = await runner.refine(new_thread(), "generic", "Settings budget.", max_loops=5, similarity_threshold=1.0)
        assert done["stop_reason"] == "budget" and len(stub.requests) == 2
        # a cost budget needs a known price: a local stub model has none
        with pytest.raises(InvalidInputError, match="REDRAFT_PRICES"):
            await runner.refine(new_thread(), "generic", "No price.", max_cost_per_run=1.0)
        with pytest.raises(InvalidInputError, match="max_tokens_per_run"):
            await runner.refine(new_thread(), "generic", "Bad budget.", max_tokens_per_run=0)
    assert len(stub.requests) == 2  # nothing was started for the refused ones


async def test_a_step_is_not_started_once_the_run_used_its_budget():
    """The check before a step: a run whose calls already reached its budget finishes the query instead of calling
    the model (the node itself never runs)."""

    async def must_not_run(state, runtime):
        raise AssertionError("the step was started")

    slot = {"query": "q", "draft": "d", "critique": [], "revision": [], "variant": "generic", "sampling": {}}
    context = RedraftContext(run_marker="run-1")
    spent = {"slot": 0, "node": "draft", "model": "m", "input_tokens": 30, "output_tokens": 20, "estimated": False}
    state = {
        "run_log": [slot],
        "run_config": {"companion": "generic", "max_tokens_per_run": 50},
        "usage": [{**spent, "cost": None, "run": "run-1"}],
    }
    update = await metered("critique", must_not_run)(state, Runtime(context=context))
    [outcome] = update["outcomes"]
    assert outcome["stop_reason"] == "budget" and outcome["best"] == 0 and outcome["budget"]["total_tokens"] == 50
    assert phase_of({**state, "outcomes": update["outcomes"]}) == "done" and "run_log" not in update
    # another run's calls do not count against this run
    other = RedraftContext(run_marker="run-2")

    async def critique(state, runtime):
        return {"run_log": []}

    assert await metered("critique", critique)(state, Runtime(context=other)) == {"run_log": []}
