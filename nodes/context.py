"""Runtime context passed to every node. Not persisted: it holds clients and per-invocation switches only."""

from __future__ import annotations

from dataclasses import dataclass, field

from langgraph.runtime import Runtime

from redraft.graph.companions import Companion, get_companion
from redraft.nodes.model import ModelProvider
from redraft.settings import Settings, get_settings


@dataclass
class RedraftContext:
    settings: Settings = field(default_factory=get_settings)
    models: ModelProvider | None = None
    # True: critique and revise pause (LangGraph interrupt) before doing anything, for step tools and "step" mode.
    stepwise: bool = False
    # A human decision for exactly one gate of this run: {"gate", "slot", "round", "decision"} (see nodes/gate.py).
    answer: dict | None = None

    def __post_init__(self) -> None:
        if self.models is None:
            self.models = ModelProvider(self.settings)

    def companion(self, name: str) -> Companion:
        return get_companion(name, self.settings.companions)


def context_of(runtime: Runtime | None) -> RedraftContext:
    ctx = getattr(runtime, "context", None)
    return ctx if isinstance(ctx, RedraftContext) else RedraftContext()
