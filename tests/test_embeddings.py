"""Embedding similarity (REDRAFT_SIMILARITY=embedding) through langchain-openai's OpenAIEmbeddings and the stub's
/v1/embeddings route, and its fallback to text similarity when the endpoint is absent or has no such route."""

from __future__ import annotations

import socket

import pytest

from redraft.graph.convergence import similarity
from redraft.graph.state import scores_for, versions
from redraft.nodes import embeddings
from tests.conftest import new_thread, runner_with
from tests.stub_answers import embedding


@pytest.fixture(autouse=True)
def _fresh_cache():
    embeddings.clear()
    yield
    embeddings.clear()


def similarity_entries(state: dict) -> list[dict]:
    return [s for s in state["scores"] if "similarity" in s]


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # nothing listens there once the socket is closed


async def test_embedding_similarity_scores_convergence(db_url, stub):
    stub.configure(changes=[30])
    async with runner_with(db_url, stub, similarity="embedding", embedding_model="stub-embed") as runner:
        thread = new_thread()
        result = await runner.refine(thread, "generic", "Write about rivers.", max_loops=2, similarity_threshold=1.0)
        state = (await runner.snapshot(thread)).values
    vs = versions(result["slot"])
    entries = similarity_entries(state)
    assert [e["method"] for e in entries] == ["embedding", "embedding"]
    for k, entry in enumerate(entries, 1):  # the cosine of the stub's vectors, not the text similarity
        a, b = embedding(vs[k - 1]), embedding(vs[k])
        assert entry["similarity"] == pytest.approx(sum(x * y for x, y in zip(a, b, strict=True)), abs=1e-5)
        assert entry["similarity"] != pytest.approx(similarity(vs[k - 1], vs[k]), abs=1e-6)
    assert scores_for(state, 0) == [e["similarity"] for e in entries]
    calls = [r for r in stub.requests if r["node"] == "embeddings"]
    assert {r["model"] for r in calls} == {"stub-embed"}
    # every version embedded once (each is compared twice): the draft and revision 1, then revision 2 alone
    assert [len(r["input"]) for r in calls] == [2, 1]
    assert all(isinstance(text, str) for r in calls for text in r["input"])  # raw text, not token ids


async def test_an_embedding_threshold_converges_the_loop(db_url, stub):
    stub.configure(changes=[2])  # two words changed: the bag-of-words vectors barely move
    async with runner_with(db_url, stub, similarity="embedding") as runner:
        result = await runner.refine(
            new_thread(), "generic", "Write about lakes.", max_loops=5, similarity_threshold=0.9
        )
    assert result["stop_reason"] == "converged" and len(result["slot"]["revision"]) == 1


@pytest.mark.parametrize("absent", ["no-route", "unreachable"])
async def test_no_embeddings_endpoint_falls_back_to_text_similarity(db_url, stub, caplog, absent):
    stub.configure(changes=[30], embeddings=absent != "no-route")
    extra = {"embedding_base_url": closed_port_url()} if absent == "unreachable" else {}
    async with runner_with(db_url, stub, similarity="embedding", **extra) as runner:
        thread = new_thread()
        result = await runner.refine(thread, "generic", "Write about seas.", max_loops=2, similarity_threshold=1.0)
        state = (await runner.snapshot(thread)).values
    assert result["stop_reason"] == "max_loops"  # the run went on
    vs = versions(result["slot"])
    entries = similarity_entries(state)
    assert [e["method"] for e in entries] == ["text", "text"]
    assert all(e["fallback"] for e in entries)
    assert ("NotFoundError" if absent == "no-route" else "APIConnectionError") in entries[0]["fallback"]
    assert [e["similarity"] for e in entries] == [similarity(vs[0], vs[1]), similarity(vs[1], vs[2])]
    assert "Embedding similarity failed" in caplog.text


async def test_text_similarity_entries_are_unchanged_by_default(runner, stub):
    stub.configure(changes=[30])
    thread = new_thread()
    await runner.refine(thread, "generic", "Write about hills.", max_loops=1, similarity_threshold=1.0)
    state = (await runner.snapshot(thread)).values
    assert [set(e) for e in similarity_entries(state)] == [{"slot", "iteration", "similarity"}]
    assert not [r for r in stub.requests if r["node"] == "embeddings"]


def test_cosine_is_clamped_and_checked():
    assert embeddings.cosine([1.0, 0.0], [-1.0, 0.0]) == 0.0
    assert embeddings.cosine([1.0, 1.0], [2.0, 2.0]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        embeddings.cosine([1.0], [1.0, 0.0])
    with pytest.raises(ValueError):
        embeddings.cosine([0.0, 0.0], [1.0, 0.0])


async def test_a_forked_revision_is_rescored_by_embedding(db_url, stub):
    from redraft.graph import timetravel as tt

    stub.configure(changes=[30])
    async with runner_with(db_url, stub, similarity="embedding") as runner:
        thread = new_thread()
        await runner.refine(thread, "generic", "Write about deltas.", max_loops=2, similarity_threshold=1.0)
        entries = (await tt.history(runner, thread, limit=50))["checkpoints"]
        at = next(e for e in entries if e["node"] == "revise" and e["revisions"] == 1)
        draft = (await runner.status(thread))["slot"]["draft"]
        edited = draft + " Extra words at the end."
        forked = await tt.fork(runner, thread, at["checkpoint_id"], revision=edited)
        state = (await runner.snapshot(thread)).values
    a, b = embedding(draft), embedding(edited)
    expected = sum(x * y for x, y in zip(a, b, strict=True))
    assert forked["similarities"] == [pytest.approx(expected, abs=1e-5)]
    assert similarity_entries(state)[-1]["method"] == "embedding"
