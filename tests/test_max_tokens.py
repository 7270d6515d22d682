"""``sampling.max_tokens`` reaches the model in the field its endpoint reads (REDRAFT_MAX_TOKENS_FIELD), through the
real ChatOpenAI client over HTTP. The stub plays llama.cpp: it reads only the classic ``max_tokens`` and cuts a
longer reply there, so a limit sent as OpenAI's ``max_completion_tokens`` is visibly ignored."""

from __future__ import annotations

import pytest

from redraft.errors import ConfigError
from redraft.graph.checkpointer import open_persistence
from redraft.graph.runner import Runner
from redraft.nodes.model import max_tokens_field
from redraft.settings import load_settings
from tests.conftest import make_settings, new_thread


@pytest.mark.parametrize(
    ("setting", "sent", "words"),
    [
        ("auto", "max_tokens", 7),  # a non-OpenAI base URL: the classic field, which the server honours
        ("max_tokens", "max_tokens", 7),
        ("max_completion_tokens", "max_completion_tokens", 300),  # the server never sees a limit: a full reply
    ],
)
async def test_max_tokens_arrives_in_the_field_the_endpoint_reads(tmp_path, stub, setting, sent, words):
    stub.configure(honour_max_tokens=True)
    settings = make_settings(
        str(tmp_path / "m.sqlite"), stub, max_tokens_field=setting, on_truncation="accept", model="small"
    )
    async with open_persistence(settings) as p:
        runner, thread = Runner(p, settings), new_thread()
        done = await runner.draft(thread, "generic", "Keep it short.", sampling={"max_tokens": 7})
    other = {"max_tokens", "max_completion_tokens"} - {sent}
    [request] = stub.requests
    assert request["sampling"][sent] == 7 and not other & set(request["sampling"])  # exactly one field
    assert len(done["slot"]["draft"].split()) == words
    assert done["slot"]["sampling"] == {"model": "small", "temperature": 0.7, "max_tokens": 7}


async def test_truncation_retry_doubles_the_limit_in_the_same_field(tmp_path, stub):
    stub.configure(honour_max_tokens=True)
    settings = make_settings(str(tmp_path / "r.sqlite"), stub)  # auto, on_truncation=retry
    async with open_persistence(settings) as p:
        runner = Runner(p, settings)
        done = await runner.draft(new_thread(), "generic", "Grow.", sampling={"max_tokens": 200})
    assert [r["sampling"].get("max_tokens") for r in stub.requests] == [200, 400]
    assert not any("max_completion_tokens" in r["sampling"] for r in stub.requests)
    assert len(done["slot"]["draft"].split()) == 300


def test_auto_sends_max_completion_tokens_only_to_openai():
    assert max_tokens_field("auto", None) == "max_completion_tokens"
    assert max_tokens_field("auto", "https://api.openai.com/v1") == "max_completion_tokens"
    assert max_tokens_field("auto", "https://me.openai.azure.com/openai/v1") == "max_completion_tokens"
    for local in ("http://127.0.0.1:8080/v1", "http://localhost:11434/v1", "https://openrouter.ai/api/v1", "::"):
        assert max_tokens_field("auto", local) == "max_tokens"
    assert max_tokens_field("max_completion_tokens", "http://127.0.0.1:8080/v1") == "max_completion_tokens"
    assert max_tokens_field("max_tokens", None) == "max_tokens"


def test_unknown_max_tokens_field_is_a_clear_config_error():
    with pytest.raises(ConfigError, match=r"REDRAFT_MAX_TOKENS_FIELD: Input should be 'auto', 'max_tokens' or"):
        load_settings(max_tokens_field="max_new_tokens")
