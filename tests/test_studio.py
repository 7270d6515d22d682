"""LangGraph Studio / Agent Server: a real ``langgraph dev`` subprocess serving this repo's langgraph.json, pointed at
the stub model, driven with ``langgraph-sdk`` (what Studio itself calls) and the official ``mcp`` client at ``/mcp``.

One server per test module (start-up takes seconds); every test works on threads of its own.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mcp
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.errors import APIStatusError

from tests.conftest import IN_CI
from tests.stub_llm import StubLLM
from tests.studio_server import LANGGRAPH, ROOT, langgraph_dev, studio_env

SERVER_KEY = "sk-studio-test-key-0123"
INPUT_FIELDS = {"query", "companion", "max_loops", "similarity_threshold", "min_score", "mode"}
OUTPUT_FIELDS = {"answer", "stop_reason", "iterations", "similarities", "run_log"}
CONTEXT_FIELDS = {"model", "base_url", "temperature", "stepwise"}


@pytest.fixture(scope="module")
def studio(stub, tmp_path_factory):
    if not Path(LANGGRAPH).exists():
        message = f"langgraph-cli is not installed ({LANGGRAPH}): pip install 'langgraph-cli[inmem]'"
        if IN_CI:
            pytest.fail(message + " -- CI=true: the Studio tests must not skip.")
        pytest.skip(message)
    directory = tmp_path_factory.mktemp("studio")
    with langgraph_dev(directory, studio_env(stub.base_url, REDRAFT_API_KEY=SERVER_KEY)) as url:
        yield url, directory
    # its working state went to the temporary directory, not the repo
    assert (directory / ".langgraph_api").is_dir()


@pytest.fixture
def client(studio):
    return get_client(url=studio[0])


def check_schemas(schemas: dict) -> None:
    """All four schemas, public and serialisable: what Studio's input form, output, state view and context editor
    are built from."""
    inp, out, state, ctx = (schemas[k] for k in ("input_schema", "output_schema", "state_schema", "context_schema"))
    assert set(inp["properties"]) == INPUT_FIELDS
    assert inp["required"] == ["query"]
    assert inp["properties"]["companion"]["enum"] == ["generic", "code", "essay", "summary"]
    assert inp["properties"]["mode"]["enum"] == ["auto", "step"]
    assert set(out["properties"]) == OUTPUT_FIELDS
    assert out["properties"]["run_log"]["items"] == {"$ref": "#/$defs/Slot"}
    assert set(ctx["properties"]) == CONTEXT_FIELDS
    assert not ctx.get("required")  # every field has a default
    # the state view: the readable output beside the internal channels
    assert {"run_log", "scores", "outcomes", "run_config"} | OUTPUT_FIELDS <= set(state["properties"])
    assert state["properties"]["answer"]["anyOf"] == [{"type": "string"}, {"type": "null"}]


async def assistant_id(client) -> str:
    (assistant,) = await client.assistants.search(graph_id="redraft")
    return assistant["assistant_id"]


async def test_schemas_on_this_python(client):
    """`/assistants/{id}/schemas` returns all four schemas on the suite's Python (CI's .venv: 3.11)."""
    check_schemas(await client.assistants.get_schemas(await assistant_id(client)))


def python_312(directory: Path) -> tuple[str | None, str]:
    """A Python 3.12 with redraft and langgraph-cli[inmem] installed: ``REDRAFT_TEST_PYTHON312`` if set, else one uv
    provides without the network. (its interpreter, "") or (None, why not)."""
    given = os.environ.get("REDRAFT_TEST_PYTHON312")
    if given:
        version = subprocess.run(
            [given, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True
        )
        assert version.stdout.strip() == "(3, 12)", f"REDRAFT_TEST_PYTHON312={given} is not Python 3.12"
        return given, ""
    uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    if not Path(uv).exists():
        return None, "uv is not installed, so it cannot provide Python 3.12 offline"
    found = subprocess.run([uv, "python", "find", "3.12", "--offline"], capture_output=True, text=True, timeout=60)
    if found.returncode != 0:
        why = (found.stderr.strip().splitlines() or ["no interpreter"])[0]
        return None, f"uv cannot provide Python 3.12 offline: {why}"
    venv = directory / "py312"
    python = str(venv / "bin" / "python")
    steps = (
        [uv, "venv", "--offline", "--python", found.stdout.strip(), str(venv)],
        [uv, "pip", "install", "--offline", "--python", python, "-e", str(ROOT), "langgraph-cli[inmem]"],
    )
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or ["failed"])[-1]
            return None, f"uv has Python 3.12 but cannot install redraft's dependencies offline: {why}"
    return python, ""


async def test_schemas_on_python_312(stub, tmp_path):
    python, why = python_312(tmp_path)
    if python is None:
        pytest.skip(why)
    with langgraph_dev(tmp_path, studio_env(stub.base_url), python=python) as url:
        client = get_client(url=url)
        check_schemas(await client.assistants.get_schemas(await assistant_id(client)))


async def test_run_streams_nodes_to_the_answer_with_readable_history(client, stub):
    """Start a run from the form's input, watch the nodes stream, read the output and the history list."""
    thread = (await client.threads.create())["thread_id"]
    nodes = []
    async for part in client.runs.stream(
        thread,
        "redraft",
        input={"query": "What is a graph?", "max_loops": 3, "similarity_threshold": 1.0},
        stream_mode="updates",
    ):
        if part.event == "updates":
            nodes += list(part.data)
    assert nodes == ["open_query", "draft"] + ["critique", "revise"] * 3 + ["publish"]

    values = (await client.threads.get_state(thread))["values"]
    slot = values["run_log"][0]
    assert values["stop_reason"] == "max_loops" and values["iterations"] == 3
    assert len(values["similarities"]) == 3 and all(0 <= s <= 1 for s in values["similarities"])
    best = values["run_log"] and values["outcomes"][0]["best"]
    assert values["answer"] == ([slot["draft"], *slot["revision"]])[best]
    assert not {"query", "max_loops"} & set(values)  # the input lived for one step only
    assert len(stub.prompts("revise")) == 3

    history = await client.threads.get_history(thread, limit=50)
    labels = [(h["metadata"]["phase"], h["metadata"]["slot"], h["metadata"]["iteration"]) for h in reversed(history)]
    assert labels == [
        ("empty", None, 0),  # the input
        ("empty", None, 0),  # open_query next
        ("needs_draft", 0, 0),
        ("ready_to_critique", 0, 0),
        ("needs_revision", 0, 0),
        ("ready_to_critique", 0, 1),
        ("needs_revision", 0, 1),
        ("ready_to_critique", 0, 2),
        ("needs_revision", 0, 2),
        ("done", 0, 3),  # publish next
        ("done", 0, 3),
    ]
    assert [h["next"] for h in reversed(history)][:3] == [["__start__"], ["open_query"], ["draft"]]

    # a second query on the thread: a new slot, the previous answer never shown as this one's
    second = await client.runs.wait(thread, "redraft", input={"query": "And a tree?"})  # the companion's defaults
    assert second["stop_reason"] == "converged" and second["iterations"] == 3 and len(second["run_log"]) == 2
    assert second["similarities"][-1] >= 0.98 > second["similarities"][-2]
    assert second["answer"] in (second["run_log"][1]["draft"], *second["run_log"][1]["revision"])
    latest = (await client.threads.get_history(thread, limit=1))[0]["metadata"]
    assert (latest["phase"], latest["slot"], latest["iteration"]) == ("done", 1, 3)


async def test_fork_from_an_edited_past_state(client):
    thread = (await client.threads.create())["thread_id"]
    await client.runs.wait(
        thread, "redraft", input={"query": "Explain forks.", "max_loops": 3, "similarity_threshold": 1.0}
    )
    history = await client.threads.get_history(thread, limit=50)
    labels = [(h["metadata"]["phase"], h["metadata"]["iteration"]) for h in history]
    after_first = history[labels.index(("ready_to_critique", 1))]
    original = after_first["values"]["run_log"][0]["revision"][0]

    # a whole slot is not an edit: a clear refusal, and the thread is untouched
    with pytest.raises(APIStatusError) as refused:
        await client.threads.update_state(
            thread,
            {"run_log": [after_first["values"]["run_log"][0]]},
            as_node="revise",
            checkpoint_id=after_first["checkpoint_id"],
        )
    assert "run_log takes events" in str(refused.value)

    edit = {"op": "edit_revision", "slot": 0, "n": 1, "text": "An edited first revision."}
    forked = await client.threads.update_state(
        thread, {"run_log": [edit]}, as_node="revise", checkpoint_id=after_first["checkpoint_id"]
    )
    fork_state = await client.threads.get_state(thread, checkpoint_id=forked["checkpoint"]["checkpoint_id"])
    assert fork_state["next"] == ["critique"]
    assert fork_state["metadata"]["source"] == "update"
    assert (fork_state["metadata"]["phase"], fork_state["metadata"]["iteration"]) == ("ready_to_critique", 1)

    final = await client.runs.wait(thread, "redraft", input=None)
    assert final["run_log"][0]["revision"][0] == "An edited first revision."
    assert final["stop_reason"] == "max_loops" and final["iterations"] == 3
    # the original branch is still there
    old = await client.threads.get_state(thread, checkpoint_id=after_first["checkpoint_id"])
    assert old["values"]["run_log"][0]["revision"] == [original]


async def test_step_mode_stops_at_the_gates_and_resumes(client, stub):
    """The summary companion's step mode (and stepwise context) interrupts at critique and revise; Studio's resume
    answers them; a bad answer asks again instead of wedging the thread."""
    thread = (await client.threads.create())["thread_id"]
    await client.runs.wait(thread, "redraft", input={"query": "Summarise graphs.", "companion": "summary"})
    state = await client.threads.get_state(thread)
    assert state["next"] == ["critique"]
    gate = state["tasks"][0]["interrupts"][0]["value"]
    assert (gate["gate"], gate["slot"], gate["round"]) == ("critique", 0, 1) and gate["text"]
    assert stub.prompts("critique") == []

    # a new query while one is paused is not started, and says so; resuming goes back to the gate
    await client.runs.wait(thread, "redraft", input={"query": "Something else."})
    (notice,) = (await client.threads.get_state(thread))["tasks"][0]["interrupts"]
    assert "not finished" in notice["value"]["error"] and notice["value"]["query"] == "Something else."
    await client.runs.wait(thread, "redraft", command={"resume": "ok"})
    state = await client.threads.get_state(thread)
    assert state["next"] == ["critique"] and state["tasks"][0]["interrupts"][0]["value"] == gate
    assert len(state["values"]["run_log"]) == 1

    await client.runs.wait(thread, "redraft", command={"resume": "yes please"})
    again = (await client.threads.get_state(thread))["tasks"][0]["interrupts"]
    assert again[0]["value"]["gate"] == "critique" and "approve, replace" in again[0]["value"]["error"]

    await client.runs.wait(thread, "redraft", command={"resume": {"action": "approve"}})
    state = await client.threads.get_state(thread)
    assert state["next"] == ["revise"] and len(stub.prompts("critique")) == 1
    assert state["tasks"][0]["interrupts"][0]["value"]["gate"] == "revise"

    await client.runs.wait(
        thread, "redraft", command={"resume": {"action": "replace", "text": "A human-written summary."}}
    )
    state = await client.threads.get_state(thread)
    assert state["values"]["run_log"][0]["revision"] == ["A human-written summary."]
    assert state["next"] == ["critique"] and stub.prompts("revise") == []

    # stepwise=false in the context lets the rest run without gates
    final = await client.runs.wait(
        thread, "redraft", command={"resume": {"action": "approve"}}, context={"stepwise": False}
    )
    assert final["stop_reason"] in ("critic_satisfied", "converged", "max_loops") and final["answer"]

    # stepwise=true pauses a companion whose mode is auto
    other = (await client.threads.create())["thread_id"]
    await client.runs.wait(other, "redraft", input={"query": "Step me."}, context={"stepwise": True})
    assert (await client.threads.get_state(other))["next"] == ["critique"]


async def test_context_fields_and_defaults(client, stub):
    """Empty, partial and full contexts work; model/temperature reach the model; a per-run endpoint never gets the
    environment's key; bad values are refused clearly."""
    out = await client.runs.wait(None, "redraft", input={"query": "Defaults.", "max_loops": 1}, context={})
    assert out["iterations"] == 1
    assert {r["authorization"] for r in stub.requests} == {f"Bearer {SERVER_KEY}"}
    assert {r["sampling"]["model"] for r in stub.requests} == {"stub-model"}

    stub.requests.clear()
    out = await client.runs.wait(
        None,
        "redraft",
        input={"query": "Overrides.", "max_loops": 1},
        context={"model": "stub-large", "temperature": 0.25},
    )
    assert out["run_log"][0]["sampling"] == {"model": "stub-large", "temperature": 0.25}
    assert {(r["sampling"]["model"], r["sampling"]["temperature"]) for r in stub.requests} == {("stub-large", 0.25)}

    other = StubLLM().start()
    try:
        out = await client.runs.wait(
            None, "redraft", input={"query": "Elsewhere.", "max_loops": 1}, context={"base_url": other.base_url}
        )
        assert out["iterations"] == 1 and other.requests
        assert {r["authorization"] for r in other.requests} == {"Bearer not-needed"}  # the key stays home
    finally:
        other.stop()

    bad = await client.runs.wait(
        None, "redraft", input={"query": "Too hot."}, context={"temperature": 5}, raise_error=False
    )
    assert "temperature" in str(bad["__error__"]) and "less than or equal to 2" in str(bad["__error__"])
    bad = await client.runs.wait(None, "redraft", input={"query": "  "}, raise_error=False)
    assert bad["__error__"]["error"] == "InvalidInputError"
    assert "The query must be a non-empty string." in bad["__error__"]["message"]
    bad = await client.runs.wait(None, "redraft", input={"query": "x", "max_loops": 0}, raise_error=False)
    assert "max_loops must be an integer from 1 to 1000" in bad["__error__"]["message"]


async def test_agent_server_mcp_lists_the_graph_and_returns_the_public_output(studio):
    """Agent Server's /mcp, with the official MCP client: the graph is a tool whose input is the public input
    schema, and a call returns the public output."""
    async with mcp.Client(f"{studio[0]}/mcp", mode="legacy") as session:
        tools = (await session.list_tools()).tools
        (tool,) = [t for t in tools if t.name == "redraft"]
        assert set(tool.input_schema["properties"]) == INPUT_FIELDS
        assert tool.input_schema["required"] == ["query"]
        assert "critiques and revises" in tool.description
        result = await session.call_tool("redraft", {"query": "Through MCP.", "max_loops": 2})
        assert not result.is_error
        output = ast.literal_eval(result.content[0].text)
        assert set(output) == OUTPUT_FIELDS
        assert output["stop_reason"] in ("critic_satisfied", "converged", "max_loops")
        assert output["answer"] in (output["run_log"][0]["draft"], *output["run_log"][0]["revision"])
        assert len(output["similarities"]) == output["iterations"] <= 2

        bad = await session.call_tool("redraft", {"query": "x", "companion": "poet"})
        assert bad.is_error and bad.content[0].text == "UnknownCompanionError"  # /mcp reports the error's name


def test_gitignore_covers_the_servers_state():
    ignored = subprocess.run(
        ["git", "check-ignore", ".langgraph_api/.langgraph_checkpoint.1.pckl"], cwd=ROOT, capture_output=True
    )
    assert ignored.returncode == 0, ".langgraph_api/ must be ignored by git"


async def test_labels_continue_from_stored_metadata_after_a_restart(stub, monkeypatch):
    """A server restarted mid-thread (its saver wrapper's memory gone) labels a checkpoint its step wrote no run_log
    event for from the parent's stored metadata; in process, over LangGraph's own saver."""
    from langgraph.checkpoint.memory import InMemorySaver

    from redraft.graph import studio
    from redraft.settings import get_settings

    monkeypatch.setenv("REDRAFT_BASE_URL", stub.base_url)
    monkeypatch.setenv("REDRAFT_MODEL", "stub-model")
    get_settings.cache_clear()
    saver, config = InMemorySaver(), {"configurable": {"thread_id": "labels"}}
    query = {"query": "Label me.", "max_loops": 2, "similarity_threshold": 1.0}
    try:
        first = studio.graph.copy(update={"checkpointer": saver})
        await first.ainvoke(query, config, interrupt_before=["publish"])
        studio._LABELLERS.clear()  # a new process: nothing remembered
        second = studio.graph.copy(update={"checkpointer": saver})
        assert second.checkpointer is not first.checkpointer
        out = await second.ainvoke(None, config)  # publish: no run_log event, the labels come from the parent
        history = [h async for h in second.aget_state_history(config)]
    finally:
        get_settings.cache_clear()
    assert out["stop_reason"] == "max_loops"
    labels = [(h.metadata["phase"], h.metadata["slot"], h.metadata["iteration"]) for h in reversed(history)]
    assert labels[2:] == [
        ("needs_draft", 0, 0),
        ("ready_to_critique", 0, 0),
        ("needs_revision", 0, 0),
        ("ready_to_critique", 0, 1),
        ("needs_revision", 0, 1),
        ("done", 0, 2),  # the first process stopped here, before publish
        ("done", 0, 2),
    ]
