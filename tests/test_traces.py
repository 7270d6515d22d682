"""OpenTelemetry traces, checked with the SDK's in-memory exporter: a refine over MCP gives FastMCP's span for the tool
call, one span per graph step under it, and one span per model call under its step with the GenAI semantic
conventions; a failed model call is an error span with ``error.type``. With tracing off nothing is recorded, and
``setup_tracing`` stays off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

LangSmith (``LANGSMITH_TRACING=true`` with a dummy endpoint) is checked on the real server of test_json_logs.py."""

from __future__ import annotations

import pytest
from fastmcp.exceptions import ToolError
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from redraft.observability import traces
from redraft.server.app import create_server
from tests.clients import PlainClient as Client
from tests.conftest import make_settings

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module")
def tracing():
    """The SDK as the global provider (FastMCP's spans use it), spans kept in memory. Set once per process, as the
    OTel API allows; redraft's own spans are switched off again after these tests."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    traces.enable(provider)
    yield EXPORTER
    traces.disable()
    EXPORTER.clear()
    EXPORTER.shutdown()  # later tests in this process keep no spans


async def test_spans_for_tool_calls_steps_and_model_calls(tmp_path, stub, tracing):
    stub.configure(critic_stop_round=None)
    mcp = create_server(make_settings(str(tmp_path / "traces.sqlite"), stub))
    tracing.clear()
    async with Client(mcp) as client:
        sid = (await client.call_tool("create_session", {})).structured_content["session_id"]
        await client.call_tool(
            "refine", {"session_id": sid, "query": "trace me", "max_loops": 1, "sampling": {"seed": 7}}
        )
        stub.fail({"status": 500, "node": "draft"})
        with pytest.raises(ToolError, match=r"^model_error: "):
            await client.call_tool("draft", {"session_id": sid, "query": "this one fails"})
    spans = tracing.get_finished_spans()
    by_id = {span.context.span_id: span for span in spans}

    def parent(span):
        return by_id.get(span.parent.span_id) if span.parent else None

    refine = next(s for s in spans if s.name == "tools/call refine")
    steps = [s for s in spans if s.name.startswith("step ") and s.context.trace_id == refine.context.trace_id]
    assert [s.name for s in steps] == ["step draft", "step critique", "step revise"]
    assert all(parent(s) is refine for s in steps)  # LangGraph runs each node in a task: the context follows
    chats = [s for s in spans if s.name == "chat stub-model" and s.context.trace_id == refine.context.trace_id]
    assert len(chats) == 3
    for chat, step in zip(chats, steps, strict=True):
        assert parent(chat) is step
        assert chat.kind == trace.SpanKind.CLIENT
        a = chat.attributes
        assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "openai"
        assert a["gen_ai.request.model"] == "stub-model" and a["gen_ai.request.seed"] == 7
        assert a["gen_ai.usage.input_tokens"] == 1 and a["gen_ai.usage.output_tokens"] == 1  # as the stub reports
        assert a["gen_ai.response.finish_reasons"] == ("stop",)
        assert a["server.address"] == "127.0.0.1" and isinstance(a["server.port"], int)
        assert "gen_ai.prompt" not in a and "gen_ai.input.messages" not in a  # prompts are never recorded

    failed = next(s for s in spans if s.name == "tools/call draft")
    step = next(s for s in spans if s.name == "step draft" and parent(s) is failed)
    chat = next(s for s in spans if s.name == "chat stub-model" and parent(s) is step)
    assert chat.status.status_code == trace.StatusCode.ERROR and chat.attributes["error.type"] == "http_5xx"
    assert step.status.status_code == trace.StatusCode.ERROR and step.attributes["error.type"] == "model_error"

    traces.disable()  # off: the same calls record no redraft span (FastMCP's own still follow the global provider)
    tracing.clear()
    try:
        async with Client(mcp) as client:
            sid = (await client.call_tool("create_session", {})).structured_content["session_id"]
            await client.call_tool("refine", {"session_id": sid, "query": "untraced", "max_loops": 1})
        assert not [s for s in tracing.get_finished_spans() if s.name.startswith(("step ", "chat "))]
    finally:
        traces.enable(trace.get_tracer_provider())


def test_tracing_stays_off_without_an_otlp_endpoint(monkeypatch):
    for name in traces.ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not traces.requested()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert traces.requested()
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not traces.requested()
