"""Companion types: a generic one plus specialised ones, each with its own prompts and defaults."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from redraft.errors import UnknownCompanionError
from redraft.nodes.prompts import CODE, ESSAY, GENERIC, SUMMARY, PromptSet
from redraft.settings import RoleOverride

Mode = Literal["auto", "step"]
ROLES = ("drafter", "critic", "reviser")


@dataclass(frozen=True)
class Companion:
    name: str
    description: str
    prompts: PromptSet
    model: str | None = None  # None: the REDRAFT_MODEL setting
    temperature: float | None = None  # None: the REDRAFT_TEMPERATURE setting
    similarity_threshold: float = 0.98
    max_loops: int = 5
    clear_history: bool = False  # True: each new query on a thread ignores the earlier queries' answers
    mode: Mode = "auto"  # "step": pause (LangGraph interrupt) before every critique and revision
    min_score: float | None = None  # stop once the critic scores a version at least this (0-10); None: off
    critique_format: Literal["structured", "text"] | None = None  # None: the REDRAFT_CRITIQUE_FORMAT setting
    # A role's own model, endpoint and sampling (None: the companion's model and temperature, REDRAFT_BASE_URL)
    drafter: RoleOverride | None = None
    critic: RoleOverride | None = None
    reviser: RoleOverride | None = None

    def role(self, name: str) -> RoleOverride | None:
        return getattr(self, name) if name in ROLES else None

    def public(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "model": self.model,
            "temperature": self.temperature,
            "similarity_threshold": self.similarity_threshold,
            "max_loops": self.max_loops,
            "min_score": self.min_score,
            "clear_history": self.clear_history,
            "mode": self.mode,
        }


COMPANION_MAP: dict[str, Companion] = {
    c.name: c
    for c in (
        Companion("generic", "General-purpose answers.", GENERIC),
        Companion(
            "code",
            "Code with a strict reviewer: more loops, low temperature.",
            CODE,
            temperature=0.2,
            similarity_threshold=0.97,
            max_loops=8,
        ),
        Companion(
            "essay",
            "Prose with a writing critic; each query starts fresh.",
            ESSAY,
            temperature=0.8,
            similarity_threshold=0.95,
            max_loops=4,
            clear_history=True,
        ),
        Companion(
            "summary",
            "Faithful summaries, reviewed step by step by a human.",
            SUMMARY,
            temperature=0.3,
            similarity_threshold=0.99,
            max_loops=3,
            clear_history=True,
            mode="step",
        ),
    )
}


def get_companion(name: str, overrides: dict | None = None) -> Companion:
    """Look a companion up, applying operator overrides (``Settings.companions``). Unknown names list the known ones."""
    try:
        companion = COMPANION_MAP[name]
    except (KeyError, TypeError):
        raise UnknownCompanionError(str(name), list(COMPANION_MAP)) from None
    override = (overrides or {}).get(name)
    if override is None:
        return companion
    changes = {k: v for k in type(override).model_fields if (v := getattr(override, k)) is not None}
    return replace(companion, **changes)


def role_models(settings) -> dict[str, dict[str, dict]]:
    """Per companion, the model, endpoint (password masked; None: OpenAI) and sampling each role resolves to."""
    from redraft.nodes.roles import ROLE_OF, endpoint_of, for_role, role_samplings
    from redraft.settings import mask_url

    resolved: dict[str, dict[str, dict]] = {}
    for name in COMPANION_MAP:
        companion = get_companion(name, settings.companions)
        base = {
            "model": companion.model or settings.model,
            "temperature": companion.temperature if companion.temperature is not None else settings.temperature,
        }
        sampling = {**base, "roles": role_samplings(companion, base, {})}
        resolved[name] = {}
        for purpose, role in ROLE_OF.items():
            chosen = for_role(sampling, purpose)
            url = endpoint_of(settings, chosen).base_url
            shown = {k: v for k, v in chosen.items() if k != "endpoint"}
            resolved[name][role] = {**shown, "base_url": mask_url(url) if url else None}
    return resolved
