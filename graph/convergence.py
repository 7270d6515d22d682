"""When to stop refining, and which version to return.

Three criteria, checked in this order after each step:

* ``critic_satisfied``: the critic says nothing is left to fix (checked after a critique, so no revision is wasted);
* ``converged``: the new revision is at least ``similarity_threshold`` similar to the version before it;
* ``max_loops``: ``max_loops`` revisions have been made.
"""

from __future__ import annotations

import functools
import re
import unicodedata

from rapidfuzz.distance import Indel

STOP_REASONS = ("critic_satisfied", "converged", "max_loops")

# The critic prompt asks for exactly NO_FURTHER_CHANGES; the pattern also accepts the usual paraphrases, but only at
# the start of the reply, so a critique that merely *mentions* the phrase does not end the loop.
NO_FURTHER_CHANGES = "NO FURTHER CHANGES"
_STOP_PATTERN = re.compile(
    r"^\W*(no further changes|no changes (are )?needed|nothing (left |more )?to (fix|change|improve)|lgtm)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"\w+", re.UNICODE)


@functools.lru_cache(maxsize=512)
def normalise_words(text: str) -> tuple[str, ...]:
    """Unicode-normalised, case-folded words with punctuation and spacing dropped. Memoised (a pure function): each
    revision is scored against the one before, so every text is normalised twice in a row."""
    return tuple(_WORD.findall(unicodedata.normalize("NFKC", text).casefold()))


def similarity(a: str, b: str) -> float:
    """Word-level normalised similarity in [0, 1] (1 - normalised indel distance over word sequences)."""
    wa, wb = normalise_words(a), normalise_words(b)
    if not wa and not wb:
        return 1.0
    return float(Indel.normalized_similarity(wa, wb))


def critic_is_satisfied(critique: str) -> bool:
    return bool(_STOP_PATTERN.match(critique.strip()))


def decide_after_revision(scores: list[float], revisions: int, threshold: float, max_loops: int) -> str | None:
    """The stop reason after a revision, or None to keep going. ``scores[-1]`` belongs to the newest revision."""
    if scores and scores[-1] >= threshold:
        return "converged"
    if revisions >= max_loops:
        return "max_loops"
    return None


def best_version(scores: list[float], n_versions: int, stop_reason: str) -> int:
    """Index (0 = draft) of the version to return.

    The newest version when the critic approved it or it converged. When the loop was cut off by ``max_loops``
    without settling, the most settled revision (highest similarity to its predecessor; later wins ties), since a
    still-oscillating tail is not evidence that the last one is best.
    """
    if n_versions <= 1 or stop_reason != "max_loops" or not scores:
        return n_versions - 1
    best = max(range(len(scores)), key=lambda i: (scores[i], i))
    return best + 1


def analyse(versions: list[str], threshold: float) -> dict:
    """Similarities between consecutive versions, computed from the texts (the convergence resource)."""
    scores = [similarity(versions[i], versions[i + 1]) for i in range(len(versions) - 1)]
    return report(scores, len(versions), threshold)


def report(scores: list[float], n_versions: int, threshold: float) -> dict:
    """The convergence report for a slot whose consecutive-version similarities are ``scores``."""
    pairs = [{"from": i, "to": i + 1, "similarity": round(s, 6)} for i, s in enumerate(scores)]
    last = pairs[-1]["similarity"] if pairs else None
    return {
        "versions": n_versions,
        "threshold": threshold,
        "similarities": pairs,
        "latest_similarity": last,
        "converged": last is not None and last >= threshold,
    }
