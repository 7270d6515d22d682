"""Prometheus metrics at /metrics of a real ``redraft serve`` over HTTP: the counters move by exactly what a refine,
a refused call and a failed model call did; /metrics sits behind the same bearer auth as /mcp; labels stay bounded
(no session ids, unknown tool names folded into ``other``)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastmcp.exceptions import ToolError
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from redraft.errors import ConflictError
from redraft.graph.checkpointer import open_persistence
from redraft.observability import metrics
from redraft.observability.metrics import BoundedLabel
from tests.clients import PlainClient as Client
from tests.conftest import make_settings
from tests.servers import http_server, server_env

TOKEN = "metrics-test-token-4f1c9a"


async def scrape(http: httpx.AsyncClient, token: str | None = TOKEN) -> dict[tuple[str, tuple], float]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    response = await http.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def delta(after: dict, before: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest.mark.postgres
async def test_metrics_move_by_what_a_refine_did(pg_url, stub):
    stub.configure(critic_stop_round=None)
    env = server_env(pg_url, stub.base_url, REDRAFT_AUTH_TOKENS=f'{{"{TOKEN}": "ops"}}')
    with http_server(env) as server:
        http = httpx.AsyncClient(base_url=server.url.removesuffix("/mcp"), timeout=10)
        # the same auth as /mcp: no token, a wrong token -> 401; health stays open
        assert (await http.get("/metrics")).status_code == 401
        assert (await http.get("/metrics", headers={"authorization": "Bearer nope"})).status_code == 401
        assert (await http.get("/healthz")).status_code == 200

        before = await scrape(http)
        async with Client(server.url, auth=TOKEN) as client:
            sid = (await client.call_tool("create_session", {})).structured_content["session_id"]
            result = await client.call_tool("refine", {"session_id": sid, "query": "observe me", "max_loops": 2})
            assert result.structured_content["phase"] == "done"
            with pytest.raises(ToolError, match=r"^wrong_phase: "):
                await client.call_tool("revise", {"session_id": sid})
            stub.fail({"status": 500, "node": "draft"})
            with pytest.raises(ToolError, match=r"^model_error: "):
                await client.call_tool("draft", {"session_id": sid, "query": "this one fails"})
            with pytest.raises(ToolError):
                await client.call_tool("no_such_tool", {"session_id": sid})
        after = await scrape(http)

        # database-wide gauges at scrape time: one background run running (its draft stalls for a while)
        stub.fail({"sleep": 3, "node": "draft"})
        async with Client(server.url, auth=TOKEN) as client:
            other = (await client.call_tool("create_session", {})).structured_content["session_id"]
            await client.call_tool("start_refine", {"session_id": other, "query": "a background run"})
            for _ in range(50):
                running = await scrape(http)
                if running[("redraft_runs_active", ())] == 1:
                    break
                await asyncio.sleep(0.1)
            assert running[("redraft_runs_active", ())] == 1 and running[("redraft_run_queue_depth", ())] == 0
            assert running[("redraft_sessions_active", ())] == 2
        await http.aclose()

    d = lambda name, **labels: delta(after, before, name, **labels)  # noqa: E731
    # tool calls by tool and outcome code, each with its latency
    assert d("redraft_tool_calls_total", tool="create_session", code="ok") == 1
    assert d("redraft_tool_calls_total", tool="refine", code="ok") == 1
    assert d("redraft_tool_calls_total", tool="revise", code="wrong_phase") == 1
    assert d("redraft_tool_calls_total", tool="draft", code="model_error") == 1
    assert d("redraft_tool_call_duration_seconds_count", tool="refine") == 1
    assert d("redraft_tool_call_duration_seconds_sum", tool="refine") > 0
    # steps by node: draft, then critique/revise twice (max_loops=2, the critic never satisfied), then the failed draft
    assert d("redraft_steps_total", node="draft", outcome="ok") == 1
    assert d("redraft_steps_total", node="critique", outcome="ok") == 2
    assert d("redraft_steps_total", node="revise", outcome="ok") == 2
    assert d("redraft_steps_total", node="draft", outcome="model_error") == 1
    assert d("redraft_step_duration_seconds_count", node="critique") == 2
    assert after[("redraft_steps_in_progress", (("node", "draft"),))] == 0
    # model calls by role and model: the stub reports 1 prompt and 1 completion token per reply
    model = {"model": "stub-model"}
    assert d("redraft_model_calls_total", role="draft", **model) == 2
    assert d("redraft_model_calls_total", role="critique", **model) == 2
    assert d("redraft_model_calls_total", role="revision", **model) == 2
    assert d("redraft_model_input_tokens_total", role="critique", **model) == 2
    assert d("redraft_model_output_tokens_total", role="revision", **model) == 2
    assert d("redraft_model_input_tokens_total", role="draft", **model) == 1  # the failed call reported none
    assert d("redraft_model_errors_total", role="draft", kind="http_5xx", **model) == 1
    assert d("redraft_model_call_duration_seconds_count", role="draft", **model) == 2
    # checkpoints written; nothing failed in storage; database-wide gauges read at scrape time
    assert d("redraft_checkpoint_bytes_written_total") > 1000
    assert d("redraft_storage_errors_total") == 0
    assert after[("redraft_sessions_active", ())] == 1
    assert after[("redraft_runs_active", ())] == 0 and after[("redraft_run_queue_depth", ())] == 0
    # bounded labels: no session id anywhere; the unknown tool is counted, under its (still few) name
    assert not any(sid in str(key) for key in after)
    assert d("redraft_tool_calls_total", tool="no_such_tool", code="error") == 1


def test_label_values_are_bounded():
    label = BoundedLabel(limit=3)
    assert [label(v) for v in ("a", "b", "a", "c", "d", "b")] == ["a", "b", "a", "c", "other", "b"]
    assert label("x" * 200) == "other" and label("bad label\n") == "other" and label(None) == "unknown"


@pytest.mark.postgres
async def test_lease_takeovers_are_counted(pg_url, stub):
    """A grant over another holder's expired lease counts once; a fresh grant, a refused one and a release none."""

    metrics.enable()  # as a server does

    def takeovers() -> float:
        return REGISTRY.get_sample_value("redraft_lease_takeovers_total")

    async with open_persistence(make_settings(pg_url, stub, lease_ttl_seconds=0.3)) as persistence:
        db = persistence.db
        before = takeovers()
        first = await db.grant("t-takeover")  # a fresh row: no takeover
        with pytest.raises(ConflictError):
            await db.grant("t-takeover")  # live: refused, no takeover
        assert takeovers() == before
        await asyncio.sleep(0.5)  # the holder "crashed": its lease lapses unreleased
        second = await db.grant("t-takeover")
        assert second.token > first.token and takeovers() == before + 1
        await db.release(second)
        await db.release(await db.grant("t-takeover"))  # after a release the row is gone: a fresh grant again
        assert takeovers() == before + 1
