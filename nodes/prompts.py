"""Prompt texts. They live in code, never in checkpoints: a thread stores only the companion's name.

Each companion has a ``PromptSet``. The prose critic prompt asks for the exact stop phrase so convergence can be
detected reliably (see ``graph.convergence``); ``structured`` turns it into the scored JSON critic's (nodes/scoring.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from redraft.graph.convergence import NO_FURTHER_CHANGES


@dataclass(frozen=True)
class PromptSet:
    draft_system: str
    critique_system: str
    revise_system: str


_CRITIC_TAIL = (
    "List concrete, actionable problems, most important first. Do not rewrite the text yourself. "
    f"If nothing is left to fix, reply with exactly: {NO_FURTHER_CHANGES}"
)
# The structured critic (nodes/scoring.py) answers one JSON object instead; the reviser reads it rendered as text.
_STRUCTURED_CRITIC_TAIL = (
    "Do not rewrite the text yourself. Reply with one JSON object and nothing else: "
    '{"score": <integer 0-10, how good the most recent version is; 10 = nothing left to improve>, '
    '"issues": [{"where": "<the part concerned>", "problem": "<what is wrong>", "fix": "<the concrete change>"}], '
    '"done": <true only if nothing is left to fix>}. List concrete, actionable issues, most important first; when '
    'nothing is left to fix, reply {"score": 10, "issues": [], "done": true}.'
)
_REVISER_TAIL = (
    "Apply every point of the critique that is correct. Keep what already works. "
    "Reply with the complete revised text only, without commentary."
)

GENERIC = PromptSet(
    draft_system="You are a careful assistant. "
    "Write a complete, accurate, well-organised answer to the user's request.",
    critique_system="You are a demanding critic reviewing an answer for accuracy, completeness and clarity. "
    + _CRITIC_TAIL,
    revise_system="You are an editor revising an answer using a critic's review. " + _REVISER_TAIL,
)

CODE = PromptSet(
    draft_system="You are a senior software engineer. Write correct, idiomatic, tested code with a short explanation "
    "for the user's request.",
    critique_system="You are a strict code critic. Review the code for bugs, edge cases, security problems, "
    "performance and readability. " + _CRITIC_TAIL,
    revise_system="You are a senior engineer revising code using a code critic's review. " + _REVISER_TAIL,
)

ESSAY = PromptSet(
    draft_system="You are a skilled writer. Write a clear, engaging piece of prose for the user's request.",
    critique_system="You are an exacting writing critic. Review the prose for argument, structure, style, "
    "concision and tone. " + _CRITIC_TAIL,
    revise_system="You are a writer revising prose using a writing critic's review. " + _REVISER_TAIL,
)

SUMMARY = PromptSet(
    draft_system="You summarise faithfully. Write a concise summary of the material the user provides, keeping "
    "every key fact and inventing nothing.",
    critique_system="You are a fact-checking critic of summaries. Flag omissions of key facts, anything not "
    "supported by the source, and wordiness. " + _CRITIC_TAIL,
    revise_system="You are an editor revising a summary using a fact-checking critic's review. " + _REVISER_TAIL,
)


def structured(prompts: PromptSet) -> PromptSet:
    """The same prompts with the critic asked for a scored JSON critique instead of prose."""
    intro = prompts.critique_system.removesuffix(_CRITIC_TAIL)
    return replace(prompts, critique_system=intro + _STRUCTURED_CRITIC_TAIL)
