"""Hypothesis-generated arguments for every tool and resource template, step-mode decisions and checkpoint ids
included: only clear coded errors (``<code>: <reason>`` on one line, never internal_error), nothing changed by a
refused call, and the server stays up."""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest
from fastmcp.exceptions import ToolError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from redraft.graph.state import check_invariants
from redraft.server.app import create_server
from tests.clients import PlainClient as Client
from tests.conftest import make_settings

NASTY = [
    "",
    " ",
    "' OR 1=1; --",
    "'); DROP TABLE checkpoints; --",
    "../../../../etc/passwd",
    "%2e%2e%2f%2e%2e%2f",
    "%s%s%n",
    "\x00",
    "a\x00b",
    "\ud800",
    "\u202e\u200b",
    "\x1b[31mred",
    "x" * 25_000,
    "00000000-0000-0000-0000-000000000000",
    "generic",
    "NO FURTHER CHANGES",
    "y" * 3_000_000,
    "ok\ud800ok",
    "text\x00",
]
BIG = NASTY[-3]
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**15), 10**15),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(NASTY),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=3),
)
# "CHECKPOINT" stands for a real checkpoint id of the session's generic thread, looked up when a call needs it.
CHECKPOINT_IDS = st.one_of(
    st.sampled_from(["CHECKPOINT", "CHECKPOINT\x00", "\x00CHECKPOINT", "CHECKPOINT\ud800"]), st.sampled_from(NASTY)
)
TEXTS = st.one_of(st.sampled_from(NASTY), st.text(max_size=30), JUNK)
DECISIONS = st.one_of(
    st.sampled_from(
        [{"action": "approve"}, {"action": "replace", "text": "mine"}, {"action": "edit", "critique": "fix it"}]
    ),
    st.fixed_dictionaries(
        {"action": st.one_of(st.sampled_from(["approve", "edit", "replace"]), JUNK)},
        optional={"text": TEXTS, "critique": TEXTS, "extra": JUNK},
    ),
    JUNK,
)
TOOLS = {
    "create_session": [],
    "companions": [],
    "draft": ["session_id", "query", "companion", "similarity_threshold", "max_loops", "sampling"],
    "critique": ["session_id", "companion", "text"],
    "revise": ["session_id", "companion", "text", "critique"],
    "refine": ["session_id", "companion", "query", "similarity_threshold", "max_loops", "sampling"],
    "resume": ["session_id", "companion", "decision"],
    "status": ["session_id", "companion"],
    "history": ["session_id", "companion", "limit", "before"],
    "state_at": ["session_id", "checkpoint_id", "companion"],
    "fork": ["session_id", "checkpoint_id", "companion", "critique", "revision"],
    "replay": ["session_id", "checkpoint_id", "companion"],
    "diff": ["session_id", "from_version", "to_version", "companion", "checkpoint_id"],
    "end_session": ["session_id"],
    "list_sessions": ["limit"],
}
SANE = {
    "query": st.text(min_size=1, max_size=200),
    "companion": st.sampled_from(["generic", "code", "essay", "summary"]),
    "similarity_threshold": st.floats(0, 1),
    "max_loops": st.integers(1, 3),
    "text": st.text(min_size=1, max_size=200),
    "critique": st.text(min_size=1, max_size=200),
    "revision": st.text(min_size=1, max_size=200),
    "limit": st.integers(1, 50),
    "from_version": st.integers(0, 3),
    "to_version": st.integers(0, 3),
    "decision": DECISIONS,
    "checkpoint_id": CHECKPOINT_IDS,
    "before": CHECKPOINT_IDS,
}
CLEAR = re.compile(r"^[a-z_]+: \S[^\n]*$")  # one line: "<code>: <reason>"
COMPANIONS = ("generic", "summary")  # summary runs in step mode: its thread waits at a gate for a decision


@pytest.fixture
async def fuzz_client(tmp_path, stub):
    stub.configure(draft_words=30, critique_words=5)
    server = create_server(make_settings(str(tmp_path / "fuzz.sqlite"), stub, max_query_chars=2_000))
    async with Client(server) as client:
        box = {"client": client}
        await _new_session(box)
        yield box


async def _new_session(box: dict) -> None:
    client = box["client"]
    box["sid"] = (await client.call_tool("create_session", {})).structured_content["session_id"]
    await client.call_tool("refine", {"session_id": box["sid"], "query": "Seed.", "max_loops": 2})
    await client.call_tool("refine", {"session_id": box["sid"], "companion": "summary", "query": "Seed."})
    page = (await client.call_tool("history", {"session_id": box["sid"]})).structured_content
    box["checkpoint"] = page["checkpoints"][1]["checkpoint_id"]


async def _threads(client, sid: str) -> dict:
    """What a refused call must leave alone: each thread's phase, slot and head checkpoint."""
    views = {}
    for companion in COMPANIONS:
        data = (await client.call_tool("status", {"session_id": sid, "companion": companion})).structured_content
        views[companion] = (data["phase"], data["slots"], data["slot"], data["checkpoint_id"], data["pending_gate"])
    return views


def _resolve(value, box: dict):
    if value == "SESSION":
        return box["sid"]
    if isinstance(value, str) and "CHECKPOINT" in value:
        return value.replace("CHECKPOINT", box["checkpoint"])
    return value


@st.composite
def calls(draw):
    tool = draw(st.sampled_from(sorted(TOOLS)))
    args = {}
    for name in TOOLS[tool]:
        choice = draw(st.sampled_from(["omit", "junk", "sane", "sane", "sane"]))
        if choice == "junk":
            args[name] = draw(JUNK)
        elif choice == "sane":
            args[name] = "SESSION" if name == "session_id" else draw(SANE.get(name, JUNK))
    if draw(st.booleans()) and draw(st.booleans()):
        args[draw(st.text(min_size=1, max_size=8))] = draw(JUNK)
    return tool, args


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(call=calls())
async def test_tools_survive_any_arguments(fuzz_client, call):
    client, sid = fuzz_client["client"], fuzz_client["sid"]
    tool, args = call
    args = {k: _resolve(v, fuzz_client) for k, v in args.items()}
    before = await _threads(client, sid)
    try:
        await client.call_tool(tool, args)
    except ToolError as exc:
        message = str(exc)
        assert "internal_error" not in message and "Traceback" not in message, message
        assert CLEAR.match(message), message
        assert await _threads(client, sid) == before, f"a refused {tool} changed a thread: {message}"
    if tool == "end_session" and args.get("session_id") == sid:
        await _new_session(fuzz_client)  # it may have ended: later examples work on a fresh one
        return
    for companion in COMPANIONS:
        state = (await client.call_tool("status", {"session_id": sid, "companion": companion})).structured_content
        check_invariants({"run_log": [state["slot"]]} if state["slot"] else {})
    assert (await client.call_tool("companions", {})).structured_content["companions"]  # still up


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(decision=DECISIONS)
async def test_resume_decisions_at_a_gate(fuzz_client, decision):
    """Every decision reaches a thread that really waits at a step-mode gate: a bad one is refused with a clear
    error and the thread still waits at the same gate; a good one moves it on."""
    client, sid = fuzz_client["client"], fuzz_client["sid"]
    status = {"session_id": sid, "companion": "summary"}
    if (await client.call_tool("status", status)).structured_content["pending_gate"] is None:
        await client.call_tool("refine", {**status, "query": "Next."})  # the last decision finished the query
    before = await _threads(client, sid)
    try:
        await client.call_tool("resume", {**status, "decision": decision})
    except ToolError as exc:
        message = str(exc)
        assert CLEAR.match(message) and "internal_error" not in message, message
        assert await _threads(client, sid) == before, message


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    session=st.one_of(st.just("SESSION"), st.sampled_from(NASTY[:12]), st.text(max_size=30)),
    companion=st.one_of(st.sampled_from(["generic", "code"]), st.sampled_from(NASTY[:12]), st.text(max_size=20)),
    resource=st.sampled_from(["latest_critique", "penultimate_revision", "convergence", "run_log", "history"]),
)
async def test_resource_templates_survive_any_path(fuzz_client, session, companion, resource):
    client, sid = fuzz_client["client"], fuzz_client["sid"]
    session = sid if session == "SESSION" else session

    def segment(value: str) -> str:
        return quote(value, safe="", errors="surrogatepass")

    uri = f"redraft://sessions/{segment(session)}/{segment(companion)}/{resource}"
    try:
        contents = await client.read_resource(uri)
        assert contents and contents[0].text
    except Exception as exc:
        message = str(exc)
        assert "internal_error" not in message and "Traceback" not in message, message
    assert (await client.call_tool("companions", {})).structured_content["companions"]


@pytest.mark.parametrize("nasty", NASTY, ids=lambda v: ascii(v)[1:21])
async def test_each_nasty_string_as_query_critique_and_session(fuzz_client, nasty):
    client, sid = fuzz_client["client"], fuzz_client["sid"]
    before = (await client.call_tool("status", {"session_id": sid})).structured_content
    for tool, args in [
        ("refine", {"session_id": sid, "query": nasty, "max_loops": 1}),
        ("critique", {"session_id": sid, "text": nasty}),
        ("status", {"session_id": nasty}),
        ("fork", {"session_id": sid, "checkpoint_id": nasty or "x", "critique": nasty or "x"}),
        ("state_at", {"session_id": sid, "checkpoint_id": nasty}),
        ("resume", {"session_id": sid, "companion": "summary", "decision": {"action": "replace", "text": nasty}}),
        ("resume", {"session_id": sid, "companion": "summary", "decision": {"action": "edit", "critique": nasty}}),
    ]:
        try:
            await client.call_tool(tool, args)
        except ToolError as exc:
            assert CLEAR.match(str(exc)) and "internal_error" not in str(exc), str(exc)
    after = (await client.call_tool("status", {"session_id": sid})).structured_content
    if after["slots"] == before["slots"]:
        assert after["slot"] == before["slot"]
    if nasty in ("\x00", "a\x00b", "\ud800", "x" * 25_000, BIG, "ok\ud800ok", "text\x00"):  # refused up front
        assert after["slots"] == before["slots"] and after["slot"] == before["slot"]
