"""Tokens, cost, budgets and anomalies where users see them: the MCP tools (refine, status, start_refine +
run_status/wait_run, the stats resource) through the official client, and `redraft run --json` / `redraft stats
--json` as subprocesses. Real database, the HTTP stub reporting a fixed usage per call (15 tokens, $0.01)."""

from __future__ import annotations

import json

from fastmcp import Client

from redraft.server.app import create_server
from redraft.server.stats import MIN_RUNS
from tests.conftest import make_settings
from tests.servers import server_env
from tests.test_cli import cli

PER_CALL = {"prompt_tokens": 10, "completion_tokens": 5}
PRICES = {"stub-model": {"input": 500.0, "output": 1000.0}}  # $0.01 a call
NEVER_CONVERGES = {"similarity_threshold": 1.0}


async def call(client, tool: str, **args) -> dict:
    return (await client.call_tool(tool, args)).structured_content


async def test_tools_show_usage_and_stop_at_the_budget_and_flag_anomalies(db_url, stub):
    stub.configure(usage=PER_CALL, changes=[5])
    server = create_server(make_settings(db_url, stub, prices=PRICES))
    async with Client(server) as client:
        sid = (await call(client, "create_session"))["session_id"]
        budgeted = {"max_loops": 5, "max_tokens_per_run": 45, **NEVER_CONVERGES}
        done = await call(client, "refine", session_id=sid, query="Budgeted.", **budgeted)
        assert done["stop_reason"] == "budget" and done["run_config"]["max_tokens_per_run"] == 45
        assert done["usage"]["run"] == {
            "calls": 3,
            "input_tokens": 30,
            "output_tokens": 15,
            "total_tokens": 45,
            "cost": 0.03,
            "estimated": False,
        }
        assert [c["node"] for c in done["usage"]["calls"]] == ["draft", "critique", "revise"]
        assert done["anomalies"] == []  # one run recorded before it: under the minimum, nothing flagged
        status = await call(client, "status", session_id=sid)
        assert status["usage"]["thread"]["total_tokens"] == 45 and status["anomalies"] is None

        step = await call(client, "draft", session_id=sid, companion="essay", query="One step.", max_cost_per_run=0.5)
        assert step["usage"]["step"]["calls"] == 1 and step["run_config"]["max_cost_per_run"] == 0.5

        run = await call(
            client,
            "start_refine",
            session_id=sid,
            companion="code",
            query="In the background.",
            max_tokens_per_run=30,
            **NEVER_CONVERGES,
        )
        finished = await call(client, "wait_run", run_id=run["run_id"], timeout_s=30)
        assert finished["status"] == "succeeded" and finished["result"]["stop_reason"] == "budget"
        assert finished["result"]["usage"]["run"]["total_tokens"] == 30 and finished["steps"] == 2
        again = await call(client, "run_status", run_id=run["run_id"])
        assert again["result"]["usage"]["run"]["cost"] == 0.02

        for i in range(MIN_RUNS):  # the norm: one loop (45 tokens)
            await call(client, "refine", session_id=sid, query=f"Usual {i}.", max_loops=1, **NEVER_CONVERGES)
        long = await call(client, "refine", session_id=sid, query="Unusual.", max_loops=4, **NEVER_CONVERGES)
        flagged = {(f["scope"], f["metric"]): f for f in long["anomalies"]}
        assert flagged[("companion", "tokens")]["value"] == 9 * 15 and flagged[("companion", "tokens")]["p95"] == 45
        assert flagged[("companion", "iterations")]["value"] == 4 and ("model", "cost") in flagged
        stats = json.loads((await client.read_resource("redraft://stats/generic"))[0].text)
    assert stats["suggestions"]["typical_tokens"] == 45 and stats["suggestions"]["typical_cost"] == 0.03
    assert stats["norms"]["tokens"]["p95"] == 9 * 15  # the unusual run now counts too
    assert {(f["scope"], f["metric"]) for f in stats["anomalies"]} >= {("companion", "tokens"), ("model", "cost")}


async def test_cli_run_json_and_stats_show_tokens_and_cost(tmp_path, stub):
    stub.configure(usage=PER_CALL, changes=[5])
    env = server_env(str(tmp_path / "cli.sqlite"), stub.base_url, REDRAFT_PRICES=json.dumps(PRICES))
    result = json.loads(await cli("run", "Budget from the terminal.", "--json", "--max-tokens-per-run", "30", env=env))
    assert result["stop_reason"] == "budget" and result["anomalies"] == []
    assert result["usage"]["query"]["total_tokens"] == 30 and result["usage"]["query"]["cost"] == 0.02
    for i in range(MIN_RUNS - 1):
        await cli("run", f"Budget {i}.", "--json", "--max-tokens-per-run", "30", env=env)
    human = await cli("run", "Far more.", "--max-loops", "3", "--threshold", "1.0", env=env)
    assert "tokens 70 in · 35 out · cost $0.070000 · 7 model call(s)" in human and "unusual:" in human
    [generic] = json.loads(await cli("stats", "generic", "--json", env=env))
    assert generic["runs"] == MIN_RUNS + 1 and generic["suggestions"]["typical_tokens"] == 30
    assert any(f["metric"] == "tokens" and f["value"] == 105 for f in generic["anomalies"])
