"""Scored critiques end to end, through the real langchain-openai client and the HTTP stub: the critic's JSON (bare,
fenced, malformed, prose) becomes a text critique in the run_log and a score in the scores log; min_score stops the
loop; the best version is the top-scored; JSON mode is asked for where the endpoint takes it."""

from __future__ import annotations

import contextlib

import pytest

from redraft.graph.state import scores_for
from redraft.nodes.scoring import JSON_CRITIQUE_MAX_TOKENS, RESPONSE_FORMATS, reset_refusals
from tests.conftest import new_thread, runner_with


@pytest.fixture(autouse=True)
def _fresh_refusals():
    reset_refusals()
    yield
    reset_refusals()


def score_entries(state: dict, slot: int = 0) -> list[dict]:
    return [s for s in state["scores"] if s["slot"] == slot and "score" in s]


async def test_min_score_stops_the_loop_and_scores_go_beside_similarities(runner, stub):
    stub.configure(critic_format="json", critic_scores=[4, 6, 9], changes=[30])
    thread = new_thread()
    result = await runner.refine(thread, "generic", "Write about rivers.", max_loops=5, min_score=8)
    assert result["stop_reason"] == "min_score"
    assert result["run_config"]["min_score"] == 8.0
    slot = result["slot"]
    assert len(slot["revision"]) == 2 and len(slot["critique"]) == 2  # critique 3 scored version 2 at 9: stop
    assert result["best_version"] == 2 and result["final_text"] == slot["revision"][1]
    # the run_log critique stays text: the structure rendered
    assert slot["critique"][0].startswith("Score: 4/10\n1. Round 1: ")
    assert slot["critique"][0].endswith(" Fix: change it")
    state = (await runner.snapshot(thread)).values
    assert [(e["iteration"], e["score"], e["requested"]) for e in score_entries(state)] == [
        (0, 4.0, "json_schema"),
        (1, 6.0, "json_schema"),
        (2, 9.0, "json_schema"),
    ]
    assert len(scores_for(state, 0)) == 2  # similarities only, as before
    assert state["outcomes"][-1]["score"] == 9.0
    # JSON mode was asked for, on every critique request
    critiques = [r for r in stub.requests if r["node"] == "critique"]
    assert [r["response_format"] for r in critiques] == [RESPONSE_FORMATS["json_schema"]] * 3
    assert '"score"' in critiques[0]["messages"][0]["content"]
    # the convergence view shows both, per version
    table = result["convergence"]["by_version"]
    assert [row["score"] for row in table] == [4.0, 6.0, 9.0]
    assert [row["similarity_to_previous"] is None for row in table] == [True, False, False]
    assert result["convergence"]["min_score"] == 8.0


async def test_best_version_is_the_top_scored_when_the_loop_runs_out(runner, stub):
    stub.configure(critic_format="json", critic_scores=[3, 8, 5], changes=[30])
    result = await runner.refine(new_thread(), "generic", "Write about lakes.", max_loops=3, similarity_threshold=1.0)
    assert result["stop_reason"] == "max_loops"
    assert len(result["slot"]["revision"]) == 3
    assert result["best_version"] == 1  # scored 8; version 3 was never scored
    assert result["final_text"] == result["slot"]["revision"][0]


async def test_a_done_critique_with_no_issues_ends_the_loop(runner, stub):
    stub.configure(critic_format="json", critic_stop_round=2, critic_scores=[5, 10], changes=[30])
    result = await runner.refine(new_thread(), "generic", "Write about seas.", max_loops=5)
    assert result["stop_reason"] == "critic_satisfied"
    assert len(result["slot"]["revision"]) == 1 and result["best_version"] == 1


async def test_a_fenced_critique_with_trailing_commas_is_read(runner, stub):
    stub.configure(critic_format="fenced", critic_scores=[7], changes=[30])
    thread = new_thread()
    result = await runner.refine(thread, "generic", "Write about hills.", max_loops=2, similarity_threshold=1.0)
    assert result["slot"]["critique"][0].startswith("Score: 7/10\n1. Round 1: ")
    state = (await runner.snapshot(thread)).values
    assert [e["score"] for e in score_entries(state)] == [7.0, 7.0]
    assert all("fallback" not in e for e in score_entries(state))


async def test_a_malformed_critique_is_kept_as_prose_and_the_fallback_noted(runner, stub, caplog):
    stub.configure(critic_format="malformed", changes=[30])
    thread = new_thread()
    result = await runner.refine(thread, "generic", "Write about caves.", max_loops=2, similarity_threshold=1.0)
    assert result["stop_reason"] == "max_loops"  # never crashed, ran its course
    assert result["slot"]["critique"][0].startswith('Round 1: {"score": 5')  # the raw reply is the critique
    assert stub.prompts("revise")[0][-1]["content"].endswith(result["slot"]["critique"][0])
    state = (await runner.snapshot(thread)).values
    entries = score_entries(state)
    assert [(e["score"], e["fallback"]) for e in entries] == [(None, "no critique object could be parsed")] * 2
    assert result["best_version"] == 2  # no score given: today's rule
    assert "kept as prose" in caplog.text


async def test_a_prose_critic_keeps_working_under_the_structured_default(runner, stub):
    stub.configure(critic_stop_round=2, changes=[30])  # the stub's prose critic
    result = await runner.refine(new_thread(), "generic", "Write about dunes.", max_loops=5)
    assert result["stop_reason"] == "critic_satisfied"
    assert result["slot"]["critique"][0].startswith("Round 1: ")


@pytest.mark.parametrize(
    ("refusal", "logged"),
    [
        # a plain refusal: HTTP 400
        (True, "refused response_format"),
        # llama-cpp-python's server refuses a json_schema response_format with HTTP 500 (a validation error naming the
        # field): that is a refusal too, so the critic is asked with the prompt alone from then on (not json_object,
        # whose grammar sampling is too slow there)
        ({"json_schema": 500}, "asking with the prompt alone"),
    ],
    ids=["http-400", "llama-cpp-python-500"],
)
async def test_an_endpoint_refusing_json_mode_is_asked_without_it(db_url, stub, caplog, refusal, logged):
    """Refused once, the critic is asked again without a response_format, never sends one to this endpoint and model
    again, and the JSON it writes anyway is still parsed and scored."""
    stub.configure(critic_format="json", critic_scores=[4, 9], reject_response_format=refusal, changes=[30])
    async with runner_with(db_url, stub) as runner:
        thread = new_thread()
        result = await runner.refine(thread, "generic", "Write about glaciers.", max_loops=5, min_score=9)
        assert result["stop_reason"] == "min_score"
        formats = [r["response_format"] for r in stub.requests if r["node"] == "critique"]
        assert formats == [RESPONSE_FORMATS["json_schema"], None, None]
        state = (await runner.snapshot(thread)).values
        assert [(e["score"], e["requested"]) for e in score_entries(state)] == [(4.0, "none"), (9.0, "none")]
        assert logged in caplog.text


async def test_a_runaway_json_critique_is_capped_and_then_asked_as_prose(runner, stub, caplog):
    """With no max_tokens of its own, a JSON-mode critique is capped at JSON_CRITIQUE_MAX_TOKENS (a weak model under
    a JSON grammar can pad until the context is full); cut again on the retry, the same critique is asked as prose."""
    stub.configure(critic_format="json", critic_scores=[9], changes=[30])
    stub.fail({"truncate": 5, "node": "critique"}, {"truncate": 5, "node": "critique"})
    result = await runner.refine(new_thread(), "generic", "Write about cirques.", max_loops=3, min_score=9)
    critiques = [r for r in stub.requests if r["node"] == "critique"]
    limits = [r["sampling"].get("max_tokens") for r in critiques]
    formats = [r["response_format"] for r in critiques]
    assert limits[:3] == [JSON_CRITIQUE_MAX_TOKENS, 2 * JSON_CRITIQUE_MAX_TOKENS, None], limits
    assert formats[:3] == [RESPONSE_FORMATS["json_schema"]] * 2 + [None], formats
    assert result["stop_reason"] == "min_score"  # the prose-asked critique still carried its JSON, and was scored
    assert "asking for this one as prose" in caplog.text


async def test_a_server_error_that_is_not_about_the_format_is_not_a_refusal(db_url, stub):
    """A plain HTTP 500 on a critique (nothing about response_format) never downgrades the format."""
    stub.configure(critic_format="json", critic_scores=[9], changes=[30])
    stub.fail({"status": 500, "node": "critique"})
    async with runner_with(db_url, stub) as runner:
        with contextlib.suppress(Exception):  # retried or reported: either way, not a refusal of the format
            await runner.refine(new_thread(), "generic", "Write about moraines.", max_loops=2, min_score=9)
    formats = [r["response_format"] for r in stub.requests if r["node"] == "critique"]
    assert formats and all(f == RESPONSE_FORMATS["json_schema"] for f in formats), formats


async def test_json_mode_can_be_pinned_and_then_a_refusal_is_an_error(db_url, stub):
    stub.configure(critic_format="json", reject_response_format=True)
    async with runner_with(db_url, stub, critique_response_format="json_object") as runner:
        with pytest.raises(Exception, match="HTTP 400"):
            await runner.refine(new_thread(), "generic", "Write about fjords.", max_loops=2)


async def test_text_critiques_are_todays_prose(db_url, stub):
    stub.configure(critic_format="json", changes=[30])  # whatever it answers, it is not parsed
    async with runner_with(db_url, stub, critique_format="text") as runner:
        thread = new_thread()
        result = await runner.refine(thread, "generic", "Write about reefs.", max_loops=2, similarity_threshold=1.0)
        assert result["slot"]["critique"][0].startswith('{"score"')
        state = (await runner.snapshot(thread)).values
        assert score_entries(state) == []
        assert all(r["response_format"] is None for r in stub.requests if r["node"] == "critique")
        assert "NO FURTHER CHANGES" in stub.prompts("critique")[0][0]["content"]
        assert result["convergence"]["scores"] == []


async def test_min_score_is_a_companion_setting_too(db_url, stub):
    stub.configure(critic_format="json", critic_scores=[7], changes=[30])
    async with runner_with(db_url, stub, companions={"generic": {"min_score": 7}}) as runner:
        result = await runner.refine(new_thread(), "generic", "Write about bays.", max_loops=5)
        assert result["stop_reason"] == "min_score" and result["slot"]["revision"] == []
        assert result["best_version"] == 0  # the draft, scored 7


async def test_a_human_critique_is_not_scored(runner, stub):
    stub.configure(critic_format="json", critic_scores=[4], changes=[30])
    thread = new_thread()
    await runner.draft(thread, "generic", "Write about ponds.", min_score=3)
    view = await runner.critique(thread, "Round 1: the second paragraph is vague.")
    assert view["phase"] == "needs_revision"  # a person's text never meets min_score
    state = (await runner.snapshot(thread)).values
    assert score_entries(state) == []


async def test_a_streamed_structured_critique_is_read(runner, stub):
    stub.configure(critic_format="json", critic_scores=[4, 9], changes=[30])
    tokens: list[tuple[str, str]] = []

    async def on_token(node, text):
        tokens.append((node, text))

    result = await runner.refine(new_thread(), "generic", "Stream it.", max_loops=5, min_score=9, on_token=on_token)
    assert result["stop_reason"] == "min_score"
    assert "".join(t for n, t in tokens if n == "critique").startswith('{"score": 4')  # the critic's own reply
    critiques = [r for r in stub.requests if r["node"] == "critique"]
    assert all(r["stream"] for r in critiques)
    assert [r["response_format"] for r in critiques] == [RESPONSE_FORMATS["json_schema"]] * 2
