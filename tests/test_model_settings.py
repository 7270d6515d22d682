"""The standard model settings: ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL`` are fallbacks for ``REDRAFT_API_KEY`` and
``REDRAFT_BASE_URL`` (which win when set), shown masked by a real ``redraft config`` and used by a real refine
against the stub."""

from __future__ import annotations

import json

from redraft.settings import configured_secrets, load_settings
from tests.servers import server_env
from tests.test_cli import cli


def openai_env(tmp_path, **extra: str) -> dict[str, str]:
    """A CLI environment with no REDRAFT_BASE_URL / REDRAFT_API_KEY and no inherited OPENAI_* variables."""
    env = server_env(str(tmp_path / "std.sqlite"), "unused")
    env = {
        k: v for k, v in env.items() if k not in ("REDRAFT_BASE_URL", "REDRAFT_API_KEY") and not k.startswith("OPENAI_")
    }
    return {**env, **extra}


async def test_config_shows_the_openai_fallbacks_masked(tmp_path):
    env = openai_env(
        tmp_path, OPENAI_BASE_URL="http://user:p4ssw0rd-x@127.0.0.1:9/v1", OPENAI_API_KEY="sk-openai-fallback-secret"
    )
    out = await cli("config", "--json", env=env)
    config = json.loads(out)
    assert config["base_url"] == "http://user:****@127.0.0.1:9/v1"  # the endpoint's password masked
    assert config["api_key"] == "****"
    assert "fallback-secret" not in out and "p4ssw0rd-x" not in out


def test_redraft_settings_win_over_the_openai_ones(monkeypatch):
    for name in ("REDRAFT_BASE_URL", "REDRAFT_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    neither = load_settings(database_url="memory")
    assert neither.base_url is None and neither.api_key.get_secret_value() == ""
    monkeypatch.setenv("OPENAI_BASE_URL", "http://openai.invalid/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    fallback = load_settings(database_url="memory")
    assert fallback.base_url == "http://openai.invalid/v1" and fallback.api_key.get_secret_value() == "sk-openai"
    monkeypatch.setenv("REDRAFT_BASE_URL", "http://redraft.invalid/v1")
    monkeypatch.setenv("REDRAFT_API_KEY", "sk-redraft")
    own = load_settings(database_url="memory")
    assert own.base_url == "http://redraft.invalid/v1" and own.api_key.get_secret_value() == "sk-redraft"
    assert "sk-openai" in configured_secrets() and "sk-redraft" in configured_secrets()  # both masked in errors
    # init arguments keep working by field name (load_settings(base_url=...), as the tests and the CLI use)
    kw = load_settings(database_url="memory", base_url="http://127.0.0.1:9/v1", api_key="sk-kw")
    assert kw.base_url == "http://127.0.0.1:9/v1" and kw.api_key.get_secret_value() == "sk-kw"


async def test_a_run_reaches_the_model_through_openai_base_url_with_openai_api_key(tmp_path, stub, monkeypatch):
    """A real refine (in process, settings read from the environment) against the stub, found through
    OPENAI_BASE_URL alone, sending OPENAI_API_KEY."""
    from redraft.graph.checkpointer import open_persistence
    from redraft.graph.runner import Runner

    for name in ("REDRAFT_BASE_URL", "REDRAFT_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-run-key")
    settings = load_settings(database_url=str(tmp_path / "run.sqlite"), model="stub-model", max_retries=0)
    async with open_persistence(settings) as persistence:
        result = await Runner(persistence, settings).refine("t-openai", "generic", "Explain fsync.")
    assert result["phase"] == "done" and result["stop_reason"] == "converged"
    assert stub.requests, "the run never reached the stub through OPENAI_BASE_URL"
    assert {r["authorization"] for r in stub.requests} == {"Bearer sk-openai-run-key"}
