"""``REDRAFT_LOG_FORMAT=json``: every line a real ``redraft serve`` writes (its own, FastMCP's, uvicorn's) is one JSON
object with time, level, event, code, session, run, node and duration; tool calls, steps and model calls carry their
context; no configured secret ever appears. Lines go to stderr (over stdio, stdout speaks only MCP).

The same server has ``OTEL_EXPORTER_OTLP_ENDPOINT`` set to a local collector: its spans arrive there over OTLP/HTTP
(the in-memory span checks are in test_traces.py). It also has ``LANGSMITH_TRACING=true`` with a dummy LangSmith
endpoint (the same local server, which accepts anything): the runs still succeed, and LangChain did post to it."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastmcp.exceptions import ToolError

from tests.clients import PlainClient as Client
from tests.servers import HttpServer, server_env

API_KEY = "sk-json-logs-secret-2b7f0c9e"
TOKEN = "json-logs-bearer-71aa3d"
KEYS = {"time", "level", "logger", "event", "code", "session", "run", "node", "duration"}


def parse(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    records = []
    for line in lines:
        record = json.loads(line)  # every line, or this fails
        assert isinstance(record, dict) and KEYS <= set(record), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"]), line
        records.append(record)
    return records


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP trace collector (``/v1/traces``): keeps the span names (and service names) of every export. Any
    other request (LangSmith's, under ``/langsmith``) is accepted and its path kept."""

    spans: list[tuple[str, str]] = []
    other: list[str] = []

    def do_POST(self):
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path != "/v1/traces":
            self.other.append(self.path)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
            return
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend((attributes.get("service.name"), span.name) for span in scope_spans.spans)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    do_PATCH = do_PUT = do_GET = do_POST

    def log_message(self, *args):
        pass


async def test_json_logs_otlp_traces_and_langsmith_on_a_real_server(tmp_path, stub):
    log_path = tmp_path / "server.log"
    collector = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    env = server_env(
        str(tmp_path / "logs.sqlite"),
        stub.base_url,
        REDRAFT_LOG_FORMAT="json",
        REDRAFT_LOG_LEVEL="DEBUG",
        REDRAFT_API_KEY=API_KEY,
        REDRAFT_AUTH_TOKENS=f'{{"{TOKEN}": "logger"}}',
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.server_address[1]}",
        OTEL_BSP_SCHEDULE_DELAY="100",
        LANGSMITH_TRACING="true",
        LANGSMITH_ENDPOINT=f"http://127.0.0.1:{collector.server_address[1]}/langsmith",
        LANGSMITH_API_KEY="lsv2-dummy-key",
        LANGSMITH_PROJECT="redraft-test",
    )
    server = HttpServer(env, log=log_path).start()
    try:
        async with Client(server.url, auth=TOKEN) as client:
            sid = (await client.call_tool("create_session", {})).structured_content["session_id"]
            await client.call_tool("refine", {"session_id": sid, "query": "log me", "max_loops": 1})
            with pytest.raises(ToolError, match=r"^wrong_phase: "):
                await client.call_tool("revise", {"session_id": sid})
            other = (await client.call_tool("create_session", {})).structured_content["session_id"]
            run = await client.call_tool("start_refine", {"session_id": other, "query": "in the background"})
            run_id = run.structured_content["run_id"]
            waited = await client.call_tool("wait_run", {"run_id": run_id, "timeout_s": 30})
            assert waited.structured_content["status"] == "succeeded", waited.structured_content
        # both exporters send from background threads, in batches: wait for them while the server runs
        wanted = {"tools/call refine", "step draft", "step revise", "chat stub-model"}
        for _ in range(200):
            names = {name for service, name in _Collector.spans if service == "redraft"}
            langsmith = [path for path in _Collector.other if path.startswith("/langsmith/")]
            if wanted <= names and langsmith:
                break
            await asyncio.sleep(0.1)
        assert wanted <= names, _Collector.spans
        # LangSmith tracing through LangChain: the runs above succeeded, and their run trees were sent
        assert langsmith, _Collector.other
    finally:
        server.stop()
        collector.shutdown()
        collector.server_close()
    text = log_path.read_text()
    records = parse(text)
    assert len(records) > 20
    assert API_KEY not in text and TOKEN not in text
    assert {r["logger"].split(".")[0] for r in records} >= {"redraft", "uvicorn", "fastmcp"}

    tools = [r for r in records if r["event"].startswith("tool ")]
    refine = next(r for r in tools if r["tool"] == "refine")
    assert refine["level"] == "info" and refine["session"] == sid and refine["code"] is None
    assert refine["duration"] > 0
    refused = next(r for r in tools if r["tool"] == "revise")
    assert refused["code"] == "wrong_phase" and refused["session"] == sid
    # the guard's own line for the refusal carries the code too
    assert any(r["code"] == "wrong_phase" and r["event"].startswith("revise: wrong_phase: ") for r in records)

    # a background run's lines name the run and its session (its steps run in a worker, outside any tool call)
    in_run = [r for r in records if r["run"] == run_id]
    assert {r["node"] for r in in_run if r["logger"] == "redraft.steps"} >= {"draft", "critique"}
    assert all(r["session"] == other for r in in_run)
    steps = [r for r in records if r["logger"] == "redraft.steps" and r["run"] is None]
    assert [r["node"] for r in steps] == ["draft", "critique", "revise"]  # max_loops=1
    assert all(r["session"] == sid and r["duration"] > 0 and r["tool"] == "refine" for r in steps)
    models = [r for r in records if r["logger"] == "redraft.model"]
    assert models and all(r["node"] == r["role"].replace("revision", "revise") for r in models)


def test_serve_logs_to_stderr_only():
    """``redraft serve`` configures one handler, on stderr: over stdio, stdout speaks MCP."""
    import io
    import logging
    import sys

    from redraft.observability.logs import JsonFormatter, configure_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO", "json")
        assert [type(h.formatter) for h in root.handlers] == [JsonFormatter]
        assert root.handlers[0].stream is sys.stderr
        captured = io.StringIO()
        configure_logging("INFO", "json", stream=captured)
        logging.getLogger("redraft.test").info("hello %s", "there", extra={"code": "x", "duration": 0.5})
        record = parse(captured.getvalue())[0]
        assert (record["event"], record["code"], record["duration"]) == ("hello there", "x", 0.5)
        assert record["level"] == "info" and record["logger"] == "redraft.test"
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
