"""Model-side faults through the real ChatOpenAI client over HTTP (the stub answers like real servers do): a prompt
larger than the context window is ``context_overflow`` with the server's reason and a way forward, a reply cut at
max_tokens is retried, failed or accepted as REDRAFT_ON_TRUNCATION says and recorded, and the client cache stays
bounded whatever the sampling."""

from __future__ import annotations

import pytest
from fastmcp.exceptions import ToolError

from redraft.errors import ConfigError, ContextOverflowError, ModelError
from redraft.graph.checkpointer import open_persistence
from redraft.graph.runner import Runner
from redraft.graph.state import check_invariants
from redraft.nodes.model import CLIENT_CACHE_SIZE, ModelProvider
from redraft.server.app import create_server
from redraft.settings import load_settings
from tests.clients import PlainClient as Client
from tests.conftest import make_settings, new_thread

REASONS = {  # what each server says, as the client must see it
    "llama.cpp": "the request exceeds the available context size, try increasing it (n_prompt_tokens=2301, n_ctx=2048)",
    "openai": "This model's maximum context length is 128000 tokens. However, your messages resulted in 131072 tokens",
    "vllm": "This model's maximum context length is 2048 tokens. However, you requested 2612 tokens",
}


async def _session(client: Client) -> str:
    return (await client.call_tool("create_session", {})).structured_content["session_id"]


async def _status(client: Client, sid: str) -> dict:
    return (await client.call_tool("status", {"session_id": sid})).structured_content


@pytest.mark.parametrize("server", sorted(REASONS))
async def test_context_overflow_is_clear_and_resume_does_not_loop(tmp_path, stub, server):
    settings = make_settings(str(tmp_path / "o.sqlite"), stub, max_retries=2)
    async with Client(create_server(settings)) as client:
        sid = await _session(client)
        stub.fail({"context_overflow": server, "node": "critique"})
        with pytest.raises(ToolError) as refused:
            await client.call_tool("refine", {"session_id": sid, "query": "Overflow the critic.", "max_loops": 2})
        text = str(refused.value)
        assert text.startswith("context_overflow: The model server refused the critique prompt")
        assert REASONS[server] in text
        assert "pass your own critique" in text and not text.endswith("(retryable)")
        assert [r["node"] for r in stub.requests] == ["draft", "critique"]  # a 400 is never retried by the client
        before = await _status(client, sid)
        assert before["phase"] == "ready_to_critique" and before["slot"]["critique"] == []

        # Resuming sends the same prompt once, gets the same clear refusal, and changes nothing.
        stub.fail({"context_overflow": server, "node": "critique"})
        with pytest.raises(ToolError, match=r"^context_overflow: .*Resuming repeats this refusal"):
            await client.call_tool("resume", {"session_id": sid})
        assert [r["node"] for r in stub.requests] == ["draft", "critique", "critique"]
        assert (await _status(client, sid))["slot"] == before["slot"]

        # The way forward the error names works: supply the critique, then the run continues to the end.
        stepped = await client.call_tool("critique", {"session_id": sid, "text": "Shorter, please."})
        assert stepped.structured_content["slot"]["critique"] == ["Shorter, please."]
        done = (await client.call_tool("refine", {"session_id": sid})).structured_content
        assert done["phase"] == "done" and done["stop_reason"] == "max_loops"


async def test_draft_overflow_names_the_numbers_and_a_smaller_max_tokens(tmp_path, stub):
    settings = make_settings(str(tmp_path / "d.sqlite"), stub)
    async with Client(create_server(settings)) as client:
        sid = await _session(client)
        stub.fail({"context_overflow": True, "node": "draft"})
        args = {"session_id": sid, "query": "A very long query.", "sampling": {"max_tokens": 256}}
        with pytest.raises(ToolError) as refused:
            await client.call_tool("refine", args)
        text = str(refused.value)
        assert text.startswith("context_overflow: The model server refused the draft prompt")
        assert "n_prompt_tokens=2301, n_ctx=2048" in text
        assert "shorter text" in text and "smaller sampling.max_tokens (this one asks for 256)" in text


async def test_overflow_reported_inside_a_stream_is_context_overflow(tmp_path, stub):
    """The CLI streams tokens: a server that reports the overflow as an SSE error event after HTTP 200 is caught too."""
    settings = make_settings(str(tmp_path / "s.sqlite"), stub)
    tokens: list[str] = []

    async def on_token(node: str, text: str) -> None:
        tokens.append(text)

    async with open_persistence(settings) as p:
        runner, thread = Runner(p, settings), new_thread()
        stub.fail({"context_overflow": True, "mid_stream": True, "node": "revise"})
        with pytest.raises(ContextOverflowError, match=r"refused the revision prompt.*exceeds the available context"):
            await runner.refine(thread, "generic", "Stream me.", on_token=on_token, max_loops=2)
        assert tokens and all(r["stream"] for r in stub.requests)
        state = await runner.status(thread)
        assert state["phase"] == "needs_revision" and state["slot"]["revision"] == []


async def test_overflow_behind_an_empty_stream_gets_the_servers_reason(tmp_path, stub):
    """llama-cpp-python answers a streamed request over its context window with HTTP 200 and no events at all; the
    same request unstreamed gets its reason."""
    settings = make_settings(str(tmp_path / "e.sqlite"), stub)

    async def on_token(node: str, text: str) -> None:
        pass

    async with open_persistence(settings) as p:
        runner, thread = Runner(p, settings), new_thread()
        fault = {"context_overflow": "llama-cpp-python", "empty_stream": True, "node": "draft"}
        stub.fail(fault, fault)
        with pytest.raises(ContextOverflowError, match=r"maximum context length is 2048 tokens\. However, you"):
            await runner.refine(thread, "generic", "word " * 2500, on_token=on_token)
        assert [r["stream"] for r in stub.requests] == [True, False]

        stub.fail({"context_overflow": True, "empty_stream": True, "node": "draft"})  # a one-off empty stream
        done = await runner.refine(new_thread(), "generic", "Glitch once.", on_token=on_token, max_loops=1)
        assert done["phase"] == "done" and done["slot"]["draft"]


async def test_overflow_reason_is_sanitised_and_bounded(tmp_path, stub):
    body = {
        "error": {
            "message": "prompt is too long\n\x1b[31mfor key sk-live-abcdef0123456789 "
            "(Authorization: Bearer eyJ.abc.def, api_key=hunter2, postgresql://app:pa55word@db/x) " + "x" * 5000,
            "type": "invalid_request_error",
        }
    }
    settings = make_settings(str(tmp_path / "x.sqlite"), stub)
    async with Client(create_server(settings)) as client:
        sid = await _session(client)
        stub.fail({"context_overflow": body, "node": "draft"})
        with pytest.raises(ToolError) as refused:
            await client.call_tool("refine", {"session_id": sid, "query": "Leak nothing."})
    text = str(refused.value)
    assert text.startswith("context_overflow: ") and "prompt is too long for key sk-****" in text
    for secret in ("abcdef0123456789", "eyJ.abc.def", "hunter2", "pa55word", "\x1b", "\n"):
        assert secret not in text
    assert len(text) < 800


# --- truncated replies ---------------------------------------------------------------------------------------------


async def _truncations(runner: Runner, thread: str) -> list[dict]:
    return list((await runner.snapshot(thread)).values.get("truncations") or [])


@pytest.mark.parametrize("streamed", [False, True], ids=["invoke", "stream"])
async def test_truncated_critique_is_retried_with_more_room_and_recorded(tmp_path, stub, streamed):
    settings = make_settings(str(tmp_path / "t.sqlite"), stub)  # on_truncation defaults to "retry"

    async def on_token(node: str, text: str) -> None:
        pass

    async with open_persistence(settings) as p:
        runner, thread = Runner(p, settings), new_thread()
        stub.fail({"truncate": 3, "node": "critique"})
        done = await runner.refine(
            thread,
            "generic",
            "Cut the critic short.",
            sampling={"max_tokens": 100},
            max_loops=1,
            on_token=on_token if streamed else None,
        )
        critique = done["slot"]["critique"][0]
        assert critique.startswith("Round 1:") and len(critique.split()) > 3  # the complete reply was stored
        sent = [(r["node"], r["sampling"].get("max_tokens"), r["stream"]) for r in stub.requests]
        assert sent[:3] == [("draft", 100, streamed), ("critique", 100, streamed), ("critique", 200, streamed)]
        # one spelling, the one a non-OpenAI endpoint reads (llama-cpp-python ignores max_completion_tokens)
        assert not any("max_completion_tokens" in r["sampling"] for r in stub.requests)
        assert await _truncations(runner, thread) == [
            {
                "slot": 0,
                "node": "critique",
                "n": 1,
                "finish_reason": "length",
                "max_tokens": 100,
                "action": "retried",
                "retry_max_tokens": 200,
            }
        ]
        check_invariants((await runner.snapshot(thread)).values)


async def test_truncated_twice_fails_clearly_and_stores_nothing(tmp_path, stub):
    settings = make_settings(str(tmp_path / "t2.sqlite"), stub)
    async with open_persistence(settings) as p:
        runner, thread = Runner(p, settings), new_thread()
        await runner.draft(thread, "generic", "Cut twice.", sampling={"max_tokens": 50})
        stub.fail({"truncate": 3, "node": "critique"}, {"truncate": 4, "node": "critique"})
        with pytest.raises(ModelError, match=r"cut off at max_tokens=50, and again at max_tokens=100") as failed:
            await runner.critique(thread)
        assert failed.value.retryable is False and failed.value.code == "model_error"
        state = await runner.status(thread)
        assert state["phase"] == "ready_to_critique" and state["slot"]["critique"] == []
        assert await _truncations(runner, thread) == []


async def test_retry_that_no_longer_fits_the_context_fails_clearly(tmp_path, stub):
    settings = make_settings(str(tmp_path / "t3.sqlite"), stub)
    async with open_persistence(settings) as p:
        runner, thread = Runner(p, settings), new_thread()
        await runner.draft(thread, "generic", "Grow into overflow.", sampling={"max_tokens": 1500})
        stub.fail({"truncate": 3, "node": "critique"}, {"context_overflow": "vllm", "node": "critique"})
        with pytest.raises(ModelError, match=r"retry with max_tokens=3000 does not fit the model's context window"):
            await runner.critique(thread)
        assert (await runner.status(thread))["slot"]["critique"] == []


async def test_truncation_without_max_tokens_cannot_get_more_room(tmp_path, stub):
    settings = make_settings(str(tmp_path / "t4.sqlite"), stub)
    async with open_persistence(settings) as p:
        runner, thread = Runner(p, settings), new_thread()
        stub.fail({"truncate": 3, "node": "draft"})
        with pytest.raises(ModelError, match=r"draft reply was cut off at the server's output limit"):
            await runner.refine(thread, "generic", "No limit set.")
        assert [r["node"] for r in stub.requests] == ["draft"]  # no pointless retry with the same room


async def test_fail_policy_over_mcp(tmp_path, stub):
    settings = make_settings(str(tmp_path / "f.sqlite"), stub, on_truncation="fail")
    async with Client(create_server(settings)) as client:
        sid = await _session(client)
        await client.call_tool("draft", {"session_id": sid, "query": "Fail fast.", "sampling": {"max_tokens": 80}})
        stub.fail({"truncate": 3, "node": "critique"})
        with pytest.raises(ToolError, match=r"^model_error: The model's critique reply was cut off at max_tokens=80"):
            await client.call_tool("critique", {"session_id": sid})
        assert [r["node"] for r in stub.requests] == ["draft", "critique"]
        assert (await _status(client, sid))["slot"]["critique"] == []


async def test_accept_policy_keeps_the_cut_text_and_records_it(tmp_path, stub):
    settings = make_settings(str(tmp_path / "a.sqlite"), stub, on_truncation="accept")
    async with open_persistence(settings) as p:
        runner, thread = Runner(p, settings), new_thread()
        stub.fail({"truncate": 5, "node": "draft"}, {"truncate": 4, "node": "revise"})
        done = await runner.refine(thread, "generic", "Keep it cut.", sampling={"max_tokens": 60}, max_loops=1)
        assert len(done["slot"]["draft"].split()) == 5 and len(done["slot"]["revision"][0].split()) == 4
        assert len(stub.requests) == 3  # draft, critique, revise: nothing retried
        notes = await _truncations(runner, thread)
        assert [(t["node"], t.get("n"), t["action"], t["max_tokens"]) for t in notes] == [
            ("draft", None, "accepted", 60),
            ("revise", 1, "accepted", 60),
        ]
        assert done["truncations"] == notes == (await runner.status(thread))["truncations"]  # shown with the query


# --- the client cache ----------------------------------------------------------------------------------------------


async def test_client_cache_is_keyed_on_the_client_and_bounded(tmp_path, stub):
    settings = make_settings(str(tmp_path / "c.sqlite"), stub)
    provider = ModelProvider(settings)
    for seed in range(1000):
        provider.get({"model": "stub-model", "temperature": 0.1 + seed % 7 / 10, "max_tokens": 10 + seed, "seed": seed})
    assert len(provider._clients) == 1
    for n in range(100):
        provider.get({"model": f"model-{n}", "temperature": 0.7})
    assert len(provider._clients) == CLIENT_CACHE_SIZE

    # Per-call sampling still reaches the server, through one shared client.
    async with open_persistence(settings) as p:
        runner = Runner(p, settings, models=ModelProvider(settings))
        for seed in (1, 2, 3):
            await runner.draft(new_thread(), "generic", "Seeded.", sampling={"seed": seed, "temperature": 0.2})
        assert [r["sampling"]["seed"] for r in stub.requests] == [1, 2, 3]
        assert {r["sampling"]["temperature"] for r in stub.requests} == {0.2}
        assert len(runner.models._clients) == 1

    unbuildable = ModelProvider(load_settings(database_url="memory", api_key="", base_url=None))
    with pytest.raises(ConfigError, match="REDRAFT_API_KEY is required"):
        unbuildable.get({"model": "gpt-4o-mini", "temperature": 0.7})
    assert len(unbuildable._clients) == 0
