"""The core graph through real parts: ChatOpenAI over HTTP to the stub, real SQLite and PostgreSQL checkpoints."""

from __future__ import annotations

import pytest

from redraft.errors import InvalidInputError, PhaseError, UnknownCompanionError
from redraft.graph.convergence import similarity
from redraft.graph.state import check_invariants, phase_of
from tests.conftest import new_thread


async def test_converges_on_similarity(runner, stub):
    stub.configure(changes=[12, 8, 4, 0])  # 300-word draft: similarities 0.96, 0.973, 0.987 >= 0.98
    result = await runner.refine(new_thread(), "generic", "Explain durable checkpoints.")
    assert result["stop_reason"] == "converged"
    assert result["phase"] == "done"
    assert len(result["slot"]["revision"]) == 3
    assert [round(s, 3) for s in result["similarities"]] == [0.96, 0.973, 0.987]
    assert result["similarities"][-1] >= 0.98 > result["similarities"][-2]
    assert result["final_text"] == result["slot"]["revision"][-1]
    # the recorded similarity is the real one between consecutive versions
    slot = result["slot"]
    assert result["similarities"][0] == pytest.approx(similarity(slot["draft"], slot["revision"][0]))


async def test_stops_when_critic_is_satisfied(runner, stub):
    stub.configure(critic_stop_round=3, changes=[30])
    result = await runner.refine(new_thread(), "generic", "Write a haiku about graphs.")
    assert result["stop_reason"] == "critic_satisfied"
    slot = result["slot"]
    # the satisfied critique is not a pending critique: lengths stay equal and nothing is left to revise
    assert len(slot["critique"]) == len(slot["revision"]) == 2
    assert result["final_text"] == slot["revision"][-1]
    assert len(stub.prompts("revise")) == 2


async def test_stops_at_max_loops_and_returns_most_settled(runner, stub):
    stub.configure(changes=[30, 8, 30, 30])  # never reaches 0.98; revision 2 is the most settled
    result = await runner.refine(new_thread(), "generic", "Compare two databases.", max_loops=4)
    assert result["stop_reason"] == "max_loops"
    assert len(result["slot"]["revision"]) == 4
    sims = result["similarities"]
    assert max(sims) == sims[1] and max(sims) < 0.98
    assert result["best_version"] == 2
    assert result["final_text"] == result["slot"]["revision"][1]


async def test_run_log_shape_and_phase_after_every_step(runner, stub):
    stub.configure(changes=[12, 8, 4, 0])
    thread = new_thread()
    seen = []

    async def on_step(event):
        state = (await runner.snapshot(thread)).values
        check_invariants(state)
        slot = state["run_log"][-1]
        seen.append((event["node"], phase_of(state), len(slot["critique"]), len(slot["revision"])))

    result = await runner.refine(thread, "generic", "Explain phases.", on_step=on_step)
    assert result["stop_reason"] == "converged"
    assert seen == [
        ("draft", "ready_to_critique", 0, 0),
        ("critique", "needs_revision", 1, 0),
        ("revise", "ready_to_critique", 1, 1),
        ("critique", "needs_revision", 2, 1),
        ("revise", "ready_to_critique", 2, 2),
        ("critique", "needs_revision", 3, 2),
        ("revise", "done", 3, 3),
    ]
    assert set(result["slot"]) == {"query", "draft", "critique", "revision", "variant", "sampling"}
    assert result["slot"]["variant"] == "generic"
    assert result["slot"]["sampling"] == {"model": "stub-model", "temperature": 0.7}


async def test_step_by_step_and_phase_errors_change_nothing(runner, stub):
    thread = new_thread()
    with pytest.raises(PhaseError, match="draft first"):
        await runner.critique(thread)
    state = await runner.draft(thread, "generic", "Step me.")
    assert state["phase"] == "ready_to_critique"
    with pytest.raises(PhaseError, match="no pending critique"):
        await runner.revise(thread)
    before = await runner.snapshot(thread)
    with pytest.raises(PhaseError):
        await runner.draft(thread, "generic", "Another query while the first is open.")
    after = await runner.snapshot(thread)
    assert after.config == before.config and after.values == before.values

    state = await runner.critique(thread, text="Round 1: be more concrete.")
    assert state["phase"] == "needs_revision"
    assert state["slot"]["critique"] == ["Round 1: be more concrete."]
    with pytest.raises(PhaseError, match="pending"):
        await runner.critique(thread)
    state = await runner.revise(thread)
    assert state["phase"] == "ready_to_critique" and len(state["slot"]["revision"]) == 1
    assert len(stub.prompts("critique")) == 0  # the client's critique replaced the model call


async def test_windows_are_draft_plus_last_two_revisions(runner, stub):
    stub.configure(changes=[40])
    result = await runner.refine(new_thread(), "generic", "Window test.", max_loops=6)
    slot = result["slot"]
    critiques = [msgs[-1]["content"] for msgs in stub.prompts("critique")]
    assert len(critiques) == 6
    for k, prompt in enumerate(critiques):  # round k+1 has seen k revisions
        assert slot["draft"] in prompt
        shown = [i for i, rev in enumerate(slot["revision"]) if f"(revision {i + 1}):\n{rev}" in prompt]
        assert shown == list(range(max(0, k - 2), k)), f"round {k + 1} saw revisions {shown}"
    revisions = [msgs[-1]["content"] for msgs in stub.prompts("revise")]
    for k, prompt in enumerate(revisions):
        current = slot["draft"] if k == 0 else slot["revision"][k - 1]
        assert f"Current text:\n{current}\n" in prompt
        assert prompt.endswith(f"Critique:\n{slot['critique'][k]}")
        assert all(old not in prompt for old in slot["critique"][:k])


async def test_prompt_size_is_flat(runner, stub):
    stub.configure(changes=[20])
    await runner.refine(new_thread(), "generic", "Flat prompts.", max_loops=10, similarity_threshold=1.0)
    sizes = [sum(len(m["content"]) for m in msgs) for msgs in stub.prompts("critique")]
    assert len(sizes) == 10
    assert abs(sizes[9] - sizes[2]) / sizes[2] < 0.05, sizes
    revise_sizes = [sum(len(m["content"]) for m in msgs) for msgs in stub.prompts("revise")]
    assert abs(revise_sizes[9] - revise_sizes[2]) / revise_sizes[2] < 0.05, revise_sizes


async def test_second_query_adds_a_slot_and_uses_history(runner, stub):
    thread = new_thread()
    first = await runner.refine(thread, "generic", "First question?")
    second = await runner.refine(thread, "generic", "Follow-up question?")
    assert second["slots"] == 2 and second["slot_index"] == 1
    assert second["slot"]["query"] == "Follow-up question?"
    state = (await runner.snapshot(thread)).values
    assert state["run_log"][0] == first["slot"]  # the first slot is untouched
    draft_prompt = stub.prompts("draft")[-1]
    assert [m["content"] for m in draft_prompt[1:3]] == ["First question?", first["final_text"]]


async def test_clear_history_companion_starts_fresh(runner, stub):
    thread = new_thread()
    await runner.refine(thread, "essay", "An essay on rivers.")
    await runner.refine(thread, "essay", "An essay on mountains.")
    draft_prompt = stub.prompts("draft")[-1]
    assert [m["role"] for m in draft_prompt] == ["system", "user"]


async def test_tokens_stream(runner, stub):
    tokens: list[tuple[str, str]] = []

    async def on_token(node, text):
        tokens.append((node, text))

    result = await runner.refine(new_thread(), "generic", "Stream please.", on_token=on_token)
    nodes = {node for node, _ in tokens}
    assert {"draft", "critique", "revise"} <= nodes
    assert "".join(t for n, t in tokens if n == "draft").strip() == result["slot"]["draft"]
    assert any(r["stream"] for r in stub.requests)


async def test_bad_run_arguments_are_clear_errors(runner):
    thread = new_thread()
    with pytest.raises(InvalidInputError, match="between 0 and 1"):
        await runner.refine(thread, "generic", "q", similarity_threshold=1.5)
    with pytest.raises(InvalidInputError, match="max_loops"):
        await runner.refine(thread, "generic", "q", max_loops=0)
    with pytest.raises(InvalidInputError, match="non-empty"):
        await runner.refine(thread, "generic", "   ")
    with pytest.raises(InvalidInputError, match="limit"):
        await runner.refine(thread, "generic", "x" * (runner.settings.max_query_chars + 1))
    with pytest.raises(InvalidInputError, match="sampling option"):
        await runner.refine(thread, "generic", "q", sampling={"api_key": "sk-123"})
    with pytest.raises(UnknownCompanionError, match="generic"):
        await runner.refine(thread, "nope", "q")
    assert (await runner.snapshot(thread)).values == {}


async def test_studio_graph_runs_with_default_context(stub, monkeypatch):
    """The graph langgraph.json points at (graph/studio.py) runs a typed query with no context: settings come from
    REDRAFT_*, and the output is the public one (tests/test_studio.py drives it under `langgraph dev`)."""
    from langgraph.checkpoint.memory import InMemorySaver

    from redraft.graph import studio
    from redraft.settings import get_settings

    monkeypatch.setenv("REDRAFT_BASE_URL", stub.base_url)
    monkeypatch.setenv("REDRAFT_MODEL", "stub-model")
    get_settings.cache_clear()
    try:
        graph = studio.graph.copy(update={"checkpointer": InMemorySaver()})
        config = {"configurable": {"thread_id": "studio"}}
        state = await graph.ainvoke({"query": "From Studio."}, config)
        full = (await graph.aget_state(config)).values
    finally:
        get_settings.cache_clear()
    assert state["stop_reason"] == "converged" and state["iterations"] == 3
    assert state["answer"] == state["run_log"][0]["revision"][-1]
    assert full["outcomes"][-1]["stop_reason"] == "converged"
    assert len(state["run_log"][0]["revision"]) == 3


def _submitted_function(fn) -> str:
    """The module-qualified name of what langchain's ``run_in_executor`` hands the pool: partial(ctx.run, wrapper),
    where ``wrapper`` closes over the real function."""
    inner = fn.args[-1] if hasattr(fn, "args") and fn.args else fn
    for cell in getattr(inner, "__closure__", None) or ():
        target = cell.cell_contents
        if callable(target) and hasattr(target, "__qualname__"):
            return f"{getattr(target, '__module__', '?')}.{target.__qualname__}"
    return repr(fn)


async def test_steps_never_hop_to_the_thread_pool(stub):
    """Routing runs on the event loop: LangGraph runs a plain-function router in the default thread pool, which
    costs a thread hop per step and, with many concurrent runs, queues behind a few worker threads."""
    import asyncio
    import concurrent.futures

    from redraft.graph.checkpointer import open_persistence
    from redraft.graph.runner import Runner
    from tests.conftest import make_settings

    submitted = []

    class Counting(concurrent.futures.ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            submitted.append(_submitted_function(fn))
            return super().submit(fn, *args, **kwargs)

    stub.configure(changes=[30])
    settings = make_settings("memory", stub)
    async with open_persistence(settings) as p:
        runner = Runner(p, settings)
        await runner.refine(new_thread(), "generic", "Warm up the HTTP client.", max_loops=1)
        asyncio.get_running_loop().set_default_executor(Counting(max_workers=2))
        result = await runner.refine(new_thread(), "generic", "No thread hops.", max_loops=4, similarity_threshold=1.0)
    assert len(result["slot"]["revision"]) == 4
    # (ChatOpenAI itself parses each response in the pool: the model client's business, not the graph's)
    assert submitted, "the counting executor saw nothing: the test would pass whatever the graph did"
    assert [name for name in submitted if not name.startswith("langchain_openai.")] == []
