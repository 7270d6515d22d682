"""The critic ends the loop only when it says nothing is left to fix and nothing else: a critique that opens with a
stop phrase and goes on to name a problem (from the model, or from a person at a gate) gets that problem revised."""

from __future__ import annotations

import pytest

from redraft.graph.convergence import critic_is_satisfied
from tests.conftest import new_thread

SATISFIED = [
    "NO FURTHER CHANGES",
    "No further changes.",
    "  **NO FURTHER CHANGES**  ",
    "`no further changes needed`",
    "LGTM!",
    "Looks good to me.",
    "Nothing left to fix.",
    "No changes are needed.",
    "No further\n  changes",
]
NOT_SATISFIED = [
    "No changes needed to the structure, but paragraph 2 is factually wrong.",
    "LGTM overall, except the query builder allows SQL injection.",
    "Nothing left to fix in the introduction. 1. The conclusion contradicts the premise.",
    "No further changes, apart from the date in the first line.",
    "The draft says NO FURTHER CHANGES in its last line; remove that.",
    "",
]


@pytest.mark.parametrize("text", SATISFIED)
def test_a_bare_stop_phrase_is_satisfied(text):
    assert critic_is_satisfied(text)


@pytest.mark.parametrize("text", NOT_SATISFIED)
def test_a_stop_phrase_followed_by_a_problem_is_not(text):
    assert not critic_is_satisfied(text)


async def test_a_model_critique_that_goes_on_after_lgtm_is_revised(runner, stub):
    stub.configure(critic_stop_round=2, critic_stop_text="LGTM overall, except the date is wrong.", changes=[30])
    result = await runner.refine(new_thread(), "generic", "Write about rivers.", max_loops=3)
    assert result["stop_reason"] == "max_loops"
    assert result["slot"]["critique"][1] == "LGTM overall, except the date is wrong."
    assert len(result["slot"]["revision"]) == 3  # the named problem went to the reviser every time
    assert stub.prompts("revise")[1][-1]["content"].endswith("Critique:\nLGTM overall, except the date is wrong.")


async def test_a_bare_stop_phrase_from_the_model_still_ends_the_loop(runner, stub):
    stub.configure(critic_stop_round=2, critic_stop_text="**No further changes.**", changes=[30])
    result = await runner.refine(new_thread(), "generic", "Write about lakes.", max_loops=5)
    assert result["stop_reason"] == "critic_satisfied"
    assert len(result["slot"]["revision"]) == 1


async def test_a_human_critique_that_names_a_problem_leaves_it_to_revise(runner, stub):
    thread = new_thread()
    await runner.draft(thread, "generic", "Write about seas.")
    result = await runner.critique(thread, text="No changes needed to the structure, but paragraph 2 is wrong.")
    assert result["phase"] == "needs_revision"
    assert result["stop_reason"] is None
    done = await runner.critique(await _revised(runner, thread), text="Nothing left to fix.")
    assert done["phase"] == "done" and done["stop_reason"] == "critic_satisfied"


async def _revised(runner, thread: str) -> str:
    await runner.revise(thread)
    return thread
