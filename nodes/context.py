"""Runtime context passed to every node. Not persisted: it holds clients and per-invocation switches only.

Two shapes reach a node:

* ``RedraftContext``: what redraft's own MCP server and CLI pass (settings, a shared model provider, the step switch
  and a gate answer). Used as is.
* ``PublicContext``: the plain, JSON-serialisable fields a LangGraph Studio / Agent Server user may set per run
  (``model``, ``base_url``, ``temperature``, ``stepwise``), or no context at all. Every field has a default. It is
  turned into a ``RedraftContext`` over the process's settings (``REDRAFT_*``), whose model clients are cached, so
  secrets only ever come from the environment.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from langgraph.runtime import Runtime
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

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
    # Marks this run's model calls in the usage log, so the run's budget counts its own calls (graph/budget.py).
    run_marker: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def __post_init__(self) -> None:
        if self.models is None:
            self.models = ModelProvider(self.settings)

    def companion(self, name: str) -> Companion:
        return get_companion(name, self.settings.companions)


class PublicContext(BaseModel):
    """Per-run settings for LangGraph Studio and Agent Server (the graph's context schema). All optional."""

    model_config = ConfigDict(extra="ignore", frozen=True, title="Run context")

    model: str | None = Field(
        default=None,
        min_length=1,
        description="Model for the queries this run starts (default: the companion's model, else REDRAFT_MODEL).",
    )
    base_url: str | None = Field(
        default=None,
        description=(
            "OpenAI-compatible endpoint for this run (default: REDRAFT_BASE_URL, else OpenAI). The API key from the "
            "environment is only ever sent to the configured endpoint, never to one set here."
        ),
    )
    temperature: float | None = Field(
        default=None,
        ge=0.0,
        le=2.0,
        description="Sampling temperature for the queries this run starts (default: the companion's).",
    )
    stepwise: bool | None = Field(
        default=None,
        description=(
            "true: pause before every critique and revision (an interrupt to resume); false: never pause; "
            "unset: pause when the query's mode is 'step' (the summary companion's default)."
        ),
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("base_url must be an http:// or https:// URL")
        return value.strip()

    def sampling(self) -> dict[str, Any]:
        """The per-query sampling overrides this context sets."""
        return {k: v for k, v in (("model", self.model), ("temperature", self.temperature)) if v is not None}


_BASE_CONTEXTS: dict[str | None, tuple[Settings, RedraftContext]] = {}
MAX_ENDPOINTS = 8


def _base_context(base_url: str | None) -> RedraftContext:
    """Settings and a model provider (its clients cached) per endpoint, over the current ``get_settings()``; one per
    process for the default endpoint."""
    settings = get_settings()
    found = _BASE_CONTEXTS.get(base_url)
    if found is not None and found[0] is settings:
        return found[1]
    endpoint = settings
    if base_url and base_url != settings.base_url:
        # another endpoint than the configured one: the environment's key stays with the endpoint it was set for
        endpoint = settings.model_copy(update={"base_url": base_url, "api_key": SecretStr("")})
    if len(_BASE_CONTEXTS) >= MAX_ENDPOINTS:
        _BASE_CONTEXTS.clear()
    context = RedraftContext(settings=endpoint)
    _BASE_CONTEXTS[base_url] = (settings, context)
    return context


def public_context(ctx: Any) -> PublicContext:
    """The run's ``PublicContext``: the one given, one built from a plain dict, or the defaults."""
    if isinstance(ctx, PublicContext):
        return ctx
    if isinstance(ctx, dict):
        return PublicContext.model_validate(ctx)
    return PublicContext()


def context_of(runtime: Runtime | None, state: dict | None = None) -> RedraftContext:
    """The node's ``RedraftContext``. A public (or missing) context pauses at the gates when it says ``stepwise``,
    or, left unset, when the query's mode (``state['run_config']['mode']``) is ``step``."""
    ctx = getattr(runtime, "context", None)
    if isinstance(ctx, RedraftContext):
        return ctx
    public = public_context(ctx)
    stepwise = public.stepwise
    if stepwise is None:
        stepwise = ((state or {}).get("run_config") or {}).get("mode") == "step"
    return replace(_base_context(public.base_url), stepwise=stepwise)
