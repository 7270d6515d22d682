"""An in-process chat model with a fixed latency, answering like the test stub, so benchmarks see graph and storage
costs rather than HTTP or model time. It records the size of every prompt it receives."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from redraft.nodes.model import ModelProvider
from tests.stub_answers import DEFAULTS, answer, node_of, usage_for

ROLE = {"system": "system", "human": "user", "ai": "assistant"}
# LangChain's usage_metadata keys from an OpenAI-style usage block, as langchain-openai maps them
USAGE_KEYS = {"input_tokens": "prompt_tokens", "output_tokens": "completion_tokens", "total_tokens": "total_tokens"}


class FakeChat(BaseChatModel):
    latency: float = 0.0
    script: dict[str, Any] = {}
    prompt_log: list[tuple[str, int]] = []

    @property
    def _llm_type(self) -> str:
        return "redraft-bench-fake"

    def _reply(self, messages: list[BaseMessage]) -> ChatResult:
        dicts = [{"role": ROLE.get(m.type, m.type), "content": m.content} for m in messages]
        node = node_of(dicts)
        self.prompt_log.append((node, sum(len(d["content"]) for d in dicts)))
        text = answer(self.script, node, dicts)
        usage = usage_for(self.script, dicts, text)
        meta = None
        if usage is not None:
            meta = {k: usage[u] for k, u in USAGE_KEYS.items()}
        message = AIMessage(text, usage_metadata=meta)
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        return self._reply(messages)

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        if self.latency:
            await asyncio.sleep(self.latency)
        return self._reply(messages)


class FakeProvider(ModelProvider):
    """Reports each call's tokens (a word count) as OpenAI-compatible endpoints do, so redraft meters what the
    endpoint says instead of estimating with tiktoken, the fallback for endpoints that omit usage
    (``usage=None``)."""

    def __init__(self, settings, latency: float = 0.0, **script: Any) -> None:
        super().__init__(settings)
        script = {"usage": "words", **script}
        self.model = FakeChat(latency=latency, script={**DEFAULTS, **script}, prompt_log=[])

    def get(self, sampling: dict[str, Any], bind: dict[str, Any] | None = None) -> BaseChatModel:
        return self.model
