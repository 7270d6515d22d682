"""Per-role models (issue 21 item 1): a companion's drafter, critic and reviser may each name their own model, base URL,
key and sampling. Routing is asserted on what two real HTTP stubs (two base URLs) received from the real ChatOpenAI
client; `redraft config` shows the resolved model per role without secrets; stats name the models that served."""

from __future__ import annotations

import json

import pytest

from redraft.errors import ConfigError
from redraft.graph.checkpointer import open_persistence
from redraft.graph.runner import Runner
from redraft.nodes.roles import model_label
from redraft.server.stats import model_of
from redraft.settings import configured_secrets, load_settings
from tests.conftest import make_settings, new_thread
from tests.servers import server_env
from tests.stub_llm import StubLLM
from tests.test_cli import cli

MAIN_KEY, CRITIC_KEY = "sk-main-key-0123456789", "sk-critic-key-9876543210"


@pytest.fixture
def critic_stub():
    other = StubLLM().start()
    yield other
    other.stop()


def _sent(stub: StubLLM) -> list[tuple]:
    return [(r["node"], r["sampling"]["model"], r["sampling"].get("temperature")) for r in stub.requests]


async def test_a_strong_critic_on_its_own_endpoint_and_a_cheap_writer(tmp_path, stub, critic_stub):
    roles = {
        "critic": {"model": "strong", "base_url": critic_stub.base_url, "api_key": CRITIC_KEY, "temperature": 0.1},
        "reviser": {"model": "cheap-reviser"},  # same endpoint as the drafter, another model
    }
    settings = make_settings(
        str(tmp_path / "r.sqlite"), stub, api_key=MAIN_KEY, model="cheap", companions={"generic": roles}
    )
    async with open_persistence(settings) as p:
        runner = Runner(p, settings)
        done = await runner.refine(new_thread(), "generic", "Route the roles.", max_loops=2)
        plain = await runner.refine(new_thread(), "code", "One model for all.", max_loops=1)

    generic = [r for r in stub.requests if "Route the roles." in json.dumps(r["messages"])]
    assert _sent(critic_stub) == [("critique", "strong", 0.1), ("critique", "strong", 0.1)]
    assert {r["authorization"] for r in critic_stub.requests} == {f"Bearer {CRITIC_KEY}"}
    assert [(n, m) for n, m, _ in _sent(stub)[: len(generic)]] == [
        ("draft", "cheap"),
        ("revise", "cheap-reviser"),
        ("revise", "cheap-reviser"),
    ]
    assert {r["authorization"] for r in stub.requests} == {f"Bearer {MAIN_KEY}"}
    # the run_log records what served each role; never an endpoint or key
    assert done["slot"]["sampling"] == {
        "model": "cheap",
        "temperature": 0.7,
        "roles": {
            "critic": {"model": "strong", "temperature": 0.1, "endpoint": "generic.critic"},
            "reviser": {"model": "cheap-reviser", "temperature": 0.7},
        },
    }
    assert model_of(done) == "drafter=cheap critic=strong reviser=cheap-reviser"
    # defaults: one model, one endpoint, for every role of a companion without role settings
    assert plain["slot"]["sampling"] == {"model": "cheap", "temperature": 0.2}
    assert {(n, m) for n, m, _ in _sent(stub)[len(generic) :]} == {
        ("draft", "cheap"),
        ("critique", "cheap"),
        ("revise", "cheap"),
    }
    assert model_of(plain) == "cheap"


async def test_per_call_sampling_applies_to_every_role(tmp_path, stub, critic_stub):
    roles = {"critic": {"model": "strong", "base_url": critic_stub.base_url, "max_tokens": 900}}
    settings = make_settings(str(tmp_path / "c.sqlite"), stub, api_key=MAIN_KEY, companions={"essay": roles})
    async with open_persistence(settings) as p:
        runner = Runner(p, settings)
        await runner.refine(new_thread(), "essay", "Override.", max_loops=1, sampling={"max_tokens": 400, "seed": 3})
    assert [(r["node"], r["sampling"]["max_tokens"], r["sampling"]["seed"]) for r in critic_stub.requests] == [
        ("critique", 400, 3)
    ]
    assert [(r["node"], r["sampling"]["max_tokens"]) for r in stub.requests] == [("draft", 400), ("revise", 400)]
    # a role without its own key uses REDRAFT_API_KEY
    assert critic_stub.requests[0]["authorization"] == f"Bearer {MAIN_KEY}"


async def test_an_endpoint_removed_from_settings_is_a_clear_error(tmp_path, stub, critic_stub):
    db = str(tmp_path / "e.sqlite")
    roles = {"critic": {"base_url": critic_stub.base_url}}
    thread = new_thread()
    settings = make_settings(db, stub, companions={"generic": roles})
    async with open_persistence(settings) as p:
        await Runner(p, settings).draft(thread, "generic", "Then the setting goes.")
    later = make_settings(db, stub)
    async with open_persistence(later) as p:
        with pytest.raises(ConfigError, match=r"REDRAFT_COMPANIONS__GENERIC__CRITIC__BASE_URL is no longer set"):
            await Runner(p, later).refine(thread, "generic")
    assert [r["node"] for r in stub.requests] == ["draft"] and critic_stub.requests == []


async def test_config_shows_the_model_per_role_and_no_secret(tmp_path, stub):
    env = {
        **server_env(str(tmp_path / "cfg.sqlite"), stub.base_url),
        "REDRAFT_API_KEY": MAIN_KEY,
        "REDRAFT_COMPANIONS__CODE__CRITIC__MODEL": "strong",
        "REDRAFT_COMPANIONS__CODE__CRITIC__BASE_URL": "http://user:pa55word@critic.example:8080/v1",
        "REDRAFT_COMPANIONS__CODE__CRITIC__API_KEY": CRITIC_KEY,
    }
    raw = await cli("config", "--json", env=env)
    config = json.loads(raw)
    assert MAIN_KEY not in raw and CRITIC_KEY not in raw and "pa55word" not in raw
    code = config["models"]["code"]
    assert code["critic"] == {
        "model": "strong",
        "temperature": 0.2,
        "base_url": "http://user:****@critic.example:8080/v1",
    }
    assert code["drafter"] == code["reviser"] == {"model": "stub-model", "temperature": 0.2, "base_url": stub.base_url}
    assert config["companions"]["code"]["critic"]["api_key"] == "****"
    human = await cli("config", env=env)
    assert "strong" in human and CRITIC_KEY not in human and "pa55word" not in human


def test_model_label_and_invalid_role_settings():
    assert model_label({"model": "m", "temperature": 0.7}) == "m"
    assert model_label({"model": "m", "roles": {"critic": {"model": "m", "endpoint": "x.critic"}}}) == "m"
    with pytest.raises(ConfigError, match=r"REDRAFT_COMPANIONS__CODE__CRITIC__TEMPERATURE: Input should be less"):
        load_settings(companions={"code": {"critic": {"temperature": 9, "api_key": CRITIC_KEY}}})


def test_role_keys_are_masked_in_settings_errors(monkeypatch):
    monkeypatch.setenv("REDRAFT_COMPANIONS__CODE__CRITIC__API_KEY", CRITIC_KEY)
    monkeypatch.setenv("REDRAFT_COMPANIONS__ESSAY__REVISER__BASE_URL", "http://x/v1")
    monkeypatch.setenv("REDRAFT_MAX_TOKENS_FIELD", f"wrong-{CRITIC_KEY}")
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert CRITIC_KEY not in refused.value.message and "REDRAFT_MAX_TOKENS_FIELD" in refused.value.message
    assert CRITIC_KEY in configured_secrets()
    monkeypatch.setenv("REDRAFT_COMPANIONS", json.dumps({"code": {"critic": {"api_key": MAIN_KEY}}}))
    assert MAIN_KEY in configured_secrets()


async def test_companions_lists_each_roles_model_and_no_endpoint(tmp_path, stub, critic_stub):
    """The MCP `companions` tool shows what each role resolves to (model, sampling, whether it has an endpoint of its
    own), and never the role's URL or key."""
    from redraft.server.app import create_server
    from tests.clients import PlainClient

    roles = {"critic": {"model": "strong", "base_url": critic_stub.base_url, "api_key": CRITIC_KEY, "temperature": 0.1}}
    settings = make_settings(
        str(tmp_path / "r.sqlite"), stub, api_key=MAIN_KEY, model="cheap", companions={"essay": roles}
    )
    async with PlainClient(create_server(settings)) as client:
        result = await client.call_tool("companions", {})
    listed = {c["name"]: c["roles"] for c in result.structured_content["companions"]}
    assert listed["essay"]["critic"] == {"model": "strong", "temperature": 0.1, "own_endpoint": True}
    assert listed["essay"]["drafter"]["model"] == "cheap" and not listed["essay"]["drafter"]["own_endpoint"]
    assert {role["model"] for role in listed["generic"].values()} == {"cheap"}
    text = json.dumps(result.structured_content)
    assert CRITIC_KEY not in text and critic_stub.base_url not in text
