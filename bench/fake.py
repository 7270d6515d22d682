"""An in-process chat model with a fixed latency, answering like the test stub, so benchmarks see graph and storage
costs rather than HTTP or model time. It records the size of every prompt it receives."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from redraft.nodes.model import ModelProvider
from tests.stub_answers import DEFAULTS, answer, node_of

ROLE = {"system": "system", "human": "user", "ai": "assistant"}


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
        return ChatResult(generations=[ChatGeneration(message=AIMessage(text))])

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        return self._reply(messages)

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        if self.latency:
            await asyncio.sleep(self.latency)
        return self._reply(messages)


class FakeProvider(ModelProvider):
    def __init__(self, settings, latency: float = 0.0, **script: Any) -> None:
        super().__init__(settings)
        self.model = FakeChat(latency=latency, script={**DEFAULTS, **script}, prompt_log=[])

    def get(self, sampling: dict[str, Any], bind: dict[str, Any] | None = None) -> BaseChatModel:
        return self.model
