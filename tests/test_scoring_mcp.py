"""Scored critiques as MCP clients see them: min_score on refine, scores beside similarities in the tool result and
the convergence resource, min_score among a companion's defaults."""

from __future__ import annotations

import json

import pytest
from fastmcp.exceptions import ToolError

from redraft.server.app import create_server
from tests.clients import PlainClient
from tests.conftest import make_settings
from tests.servers import server_env


@pytest.fixture
def server(db_url, stub):
    return create_server(make_settings(db_url, stub, companions={"code": {"min_score": 9}}))


async def test_min_score_and_the_convergence_view_through_mcp(server, stub):
    stub.configure(critic_format="json", critic_scores=[3, 7, 8], changes=[30])
    async with PlainClient(server) as client:
        sid = (await client.call_tool("create_session", {})).structured_content["session_id"]
        args = {"session_id": sid, "query": "Explain MCP.", "max_loops": 5, "min_score": 7.5}
        view = (await client.call_tool("refine", args)).structured_content
        assert view["stop_reason"] == "min_score"
        assert view["best_version"] == 2 and view["final_text"] == view["slot"]["revision"][1]
        assert view["slot"]["critique"][0].startswith("Score: 3/10\n1. Round 1: ")
        assert view["run_config"]["min_score"] == 7.5
        assert [row["score"] for row in view["convergence"]["by_version"]] == [3.0, 7.0, 8.0]

        uri = f"redraft://sessions/{sid}/generic/convergence"
        conv = json.loads((await client.read_resource(uri))[0].text)
        assert conv["stop_reason"] == "min_score" and conv["best_version"] == 2
        assert (conv["min_score"], conv["latest_score"], conv["best_score"]) == (7.5, 8.0, 8.0)
        rows = conv["by_version"]
        assert [(r["version"], r["score"]) for r in rows] == [(0, 3.0), (1, 7.0), (2, 8.0)]
        assert rows[0]["similarity_to_previous"] is None
        assert [r["similarity_to_previous"] for r in rows[1:]] == [p["similarity"] for p in conv["similarities"]]
        assert conv["stored_similarities"] == view["similarities"]

        with pytest.raises(ToolError, match="min_score"):
            await client.call_tool("refine", {"session_id": sid, "query": "Again.", "min_score": 11})


async def test_a_companions_min_score_is_listed_and_used(server, stub):
    stub.configure(critic_format="json", critic_scores=[9], changes=[30])
    async with PlainClient(server) as client:
        listed = (await client.call_tool("companions", {})).structured_content["companions"]
        assert {c["name"]: c["min_score"] for c in listed} == {
            "generic": None,
            "code": 9.0,
            "essay": None,
            "summary": None,
        }
        sid = (await client.call_tool("create_session", {})).structured_content["session_id"]
        args = {"session_id": sid, "companion": "code", "query": "Write a sort."}
        view = (await client.call_tool("refine", args)).structured_content
        assert view["stop_reason"] == "min_score" and view["slot"]["revision"] == []


async def test_the_cli_takes_min_score(tmp_path, stub):
    from tests.test_cli import cli

    stub.configure(critic_format="json", critic_scores=[4, 8], changes=[30])
    env = server_env(str(tmp_path / "cli.sqlite"), stub.base_url)
    result = json.loads(await cli("run", "Explain fsync.", "--min-score", "8", "--max-loops", "5", "--json", env=env))
    assert result["stop_reason"] == "min_score" and result["best_version"] == 1
    assert [row["score"] for row in result["convergence"]["by_version"]] == [4.0, 8.0]
    await cli("run", "Explain fsync.", "--min-score", "11", env=env, expect=2)


async def test_start_refine_takes_min_score(server, stub):
    stub.configure(critic_format="json", critic_scores=[2, 9], changes=[30])
    async with PlainClient(server) as client:
        sid = (await client.call_tool("create_session", {})).structured_content["session_id"]
        args = {"session_id": sid, "query": "Explain leases.", "max_loops": 5, "min_score": 9}
        run = (await client.call_tool("start_refine", args)).structured_content
        done = (await client.call_tool("wait_run", {"run_id": run["run_id"], "timeout_s": 30})).structured_content
        assert done["status"] == "succeeded", done
        result = done["result"]
        assert result["stop_reason"] == "min_score" and result["best_version"] == 1
        assert [row["score"] for row in result["convergence"]["by_version"]] == [2.0, 9.0]
