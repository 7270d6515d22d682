"""When to stop refining, and which version to return.

Four criteria, checked in this order after each step:

* ``critic_satisfied``: the critic says nothing is left to fix (checked after a critique, so no revision is wasted):
  a prose critique that is a stop phrase and nothing else, or a structured one with ``done`` and no issues;
* ``min_score``: the critic scored the version at least ``min_score`` (0-10; off unless set);
* ``converged``: the new revision is at least ``similarity_threshold`` similar to the version before it;
* ``max_loops``: ``max_loops`` revisions have been made.

The version returned is the one the critic scored highest when there are scores (nodes/scoring.py), else the rule in
``best_version``.

Similarity is bounded in time and memory whatever the texts (see ``_indel_distance`` and ``WordCache``), and callers
on the event loop use ``similarity_async``, which scores big texts in a worker thread, in pieces that never hold the
GIL for long.
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
import sys
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from rapidfuzz.distance import Indel

from redraft.graph.state import slot_scores

STOP_REASONS = ("critic_satisfied", "min_score", "converged", "max_loops")

# The critic prompt asks for exactly NO_FURTHER_CHANGES; the pattern also accepts the usual paraphrases, but only as
# the whole critique (around it nothing but spacing, punctuation and markup): a critique that starts with one and goes
# on ("No changes needed to the structure, but paragraph 2 is wrong", "LGTM overall, except ...") names a problem, and
# the loop must revise it. The same holds for a critique a person supplies at a gate.
NO_FURTHER_CHANGES = "NO FURTHER CHANGES"
_STOP_PATTERN = re.compile(
    r"[\W_]*(no further changes( (are )?(needed|required))?|no (more |other )?changes (are )?(needed|required)"
    r"|nothing (left |more |else )?to (fix|change|improve)|lgtm|looks good to me)[\W_]*",
    re.IGNORECASE,
)
_WORD = re.compile(r"\w+", re.UNICODE)


# Text work (normalising, scoring, diffing) on big inputs runs in these threads, never on the event loop, and at most
# two at a time per process, which bounds the memory it can hold at once.
_TEXT_WORKERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="redraft-text")
T = TypeVar("T")

# Normalisation works in pieces of about this many characters, cut before ASCII whitespace (where NFKC, case folding
# and word splitting cannot interact across the cut): no single C call holds the GIL for long, so a worker thread
# leaves the event loop free. NFKC can expand a character 18-fold.
PIECE_CHARS = 4096
_SPACE = re.compile(r"[ \t\n\r\f\v]")
# Exact word-level distance costs len(a) * len(b) / 64 machine steps; past this many cells, see _indel_distance.
EXACT_CELLS = 100_000_000
BAND_CELLS = 50_000_000
# Texts this small are scored inline: at most a few milliseconds (ASCII does not expand under NFKC).
INLINE_CHARS = 40_000
INLINE_NON_ASCII_CHARS = 2_000


class WordCache:
    """Normalised words of recent texts, bounded by an estimate of the bytes they hold (not by entry count: NFKC can
    expand a 100,000-character text into 300,000 words, ~30 MB). Thread-safe, least recently used out first."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[tuple[str, ...], int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, text: str) -> tuple[str, ...] | None:
        with self._lock:
            entry = self._entries.get(text)
            if entry is None:
                return None
            self._entries.move_to_end(text)
            return entry[0]

    def put(self, text: str, words: tuple[str, ...]) -> None:
        cost = sys.getsizeof(text) + sys.getsizeof(words) + 60 * len(words) + 4 * sum(map(len, words))
        if cost > self.max_bytes // 4:
            return  # one entry may not crowd out the rest
        with self._lock:
            if text in self._entries:
                return
            self._entries[text] = (words, cost)
            self.bytes += cost
            while self.bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self.bytes -= dropped

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0


WORD_CACHE = WordCache(max_bytes=32 * 2**20)


def normalise_words(text: str) -> tuple[str, ...]:
    """Unicode-normalised (NFKC), case-folded words with punctuation and spacing dropped. Cached (a pure function):
    each revision is scored against the one before, so every text is normalised twice in a row."""
    words = WORD_CACHE.get(text)
    if words is None:
        words = tuple(
            word for piece in _pieces(text) for word in _WORD.findall(unicodedata.normalize("NFKC", piece).casefold())
        )
        WORD_CACHE.put(text, words)
    return words


def _pieces(text: str):
    start = 0
    while len(text) - start > 2 * PIECE_CHARS:
        space = _SPACE.search(text, start + PIECE_CHARS, start + 2 * PIECE_CHARS)
        # no whitespace in a whole piece (a pathological text): cut anyway, at worst splitting one giant word
        cut = space.start() if space else start + PIECE_CHARS
        yield text[start:cut]
        start = cut
    yield text[start:]


def similarity(a: str, b: str) -> float:
    """Word-level normalised similarity in [0, 1]: 1 - indel distance / total words over the normalised word
    sequences. Exact whenever the texts are similar or small; see ``_indel_distance`` for the rest."""
    wa, wb = normalise_words(a), normalise_words(b)
    total = len(wa) + len(wb)
    if not total:
        return 1.0
    return 1.0 - _indel_distance(wa, wb) / total


def _indel_distance(wa: tuple[str, ...], wb: tuple[str, ...]) -> int:
    """Insertions plus deletions turning ``wa`` into ``wb``, in bounded time: no single call past ~15 ms.

    After the common prefix and suffix, a core of up to ``EXACT_CELLS`` is computed exactly; a larger one exactly
    too when its distance fits a band (the texts are similar: the case a convergence threshold cares about). Only
    large, very different texts get an upper bound (a lower similarity): the cores cut into aligned blocks."""
    if wa == wb:
        return 0
    head, limit = 0, min(len(wa), len(wb))
    while head < limit and wa[head] == wb[head]:
        head += 1
    tail = 0
    while tail < limit - head and wa[-1 - tail] == wb[-1 - tail]:
        tail += 1
    ca, cb = encode_words(wa[head : len(wa) - tail], wb[head : len(wb) - tail])
    n, m = len(ca), len(cb)
    if not n or not m or n * m <= EXACT_CELLS:
        return int(Indel.distance(ca, cb))
    band = BAND_CELLS // max(n, m)
    if abs(n - m) <= band:
        distance = int(Indel.distance(ca, cb, score_cutoff=band))
        if distance <= band:
            return distance
    blocks = math.ceil(math.sqrt(n * m / EXACT_CELLS))
    return sum(
        int(Indel.distance(ca[n * k // blocks : n * (k + 1) // blocks], cb[m * k // blocks : m * (k + 1) // blocks]))
        for k in range(blocks)
    )


def encode_words(wa: Sequence[str], wb: Sequence[str]) -> tuple[Sequence, Sequence]:
    """Each distinct word as one code point: rapidfuzz compares strings several times faster than lists of str."""
    ids: dict[str, int] = {}
    xa = [ids.setdefault(word, len(ids)) for word in wa]
    xb = [ids.setdefault(word, len(ids)) for word in wb]
    if len(ids) > sys.maxunicode:
        return xa, xb
    return "".join(map(chr, xa)), "".join(map(chr, xb))


async def off_loop(fn: Callable[..., T], *args) -> T:
    """Run ``fn(*args)`` in a text worker thread."""
    return await asyncio.get_running_loop().run_in_executor(_TEXT_WORKERS, functools.partial(fn, *args))


def _inline(a: str, b: str) -> bool:
    size = len(a) + len(b)
    return size <= INLINE_CHARS and (size <= INLINE_NON_ASCII_CHARS or (a.isascii() and b.isascii()))


async def similarity_async(a: str, b: str) -> float:
    """``similarity`` for callers on the event loop: inline for small texts, in a worker thread otherwise."""
    return similarity(a, b) if _inline(a, b) else await off_loop(similarity, a, b)


def critic_is_satisfied(critique: str) -> bool:
    return bool(_STOP_PATTERN.fullmatch(" ".join(critique.split())))


def decide_after_revision(scores: list[float], revisions: int, threshold: float, max_loops: int) -> str | None:
    """The stop reason after a revision, or None to keep going. ``scores[-1]`` belongs to the newest revision."""
    if scores and scores[-1] >= threshold:
        return "converged"
    if revisions >= max_loops:
        return "max_loops"
    return None


def decide_after_critique(score: float | None, min_score: float | None) -> str | None:
    """``min_score`` when the critic's score of the current version reaches the run's ``min_score`` (None: off)."""
    if min_score is not None and score is not None and score >= min_score:
        return "min_score"
    return None


def critic_scores_for(state: dict, slot_index: int) -> dict[int, float | None]:
    """The critic's score per version of a slot (version 0 = draft), from the ``scores`` log's score entries (a
    later entry for the same version wins); empty for prose critiques and checkpoints written before scores."""
    return dict(slot_scores(state, slot_index)[1])


def best_version(
    scores: list[float], n_versions: int, stop_reason: str, critic: dict[int, float | None] | None = None
) -> int:
    """Index (0 = draft) of the version to return.

    When the critic scored versions (``critic``: version -> score), the highest-scored one (later wins ties); a
    version never scored (the last revision when the loop stops after a revision) is not chosen over a scored one.
    Otherwise the newest version when the critic approved it or it converged. When the loop was cut off by
    ``max_loops`` without settling, the most settled revision (highest similarity to its predecessor; later wins
    ties), since a still-oscillating tail is not evidence that the last one is best.
    """
    scored = [
        (score, version) for version, score in (critic or {}).items() if score is not None and version < n_versions
    ]
    if scored:
        return max(scored)[1]
    if n_versions <= 1 or stop_reason != "max_loops" or not scores:
        return n_versions - 1
    best = max(range(len(scores)), key=lambda i: (scores[i], i))
    return best + 1


def analyse(versions: list[str], threshold: float) -> dict:
    """Similarities between consecutive versions, computed from the texts (the convergence resource)."""
    scores = [similarity(versions[i], versions[i + 1]) for i in range(len(versions) - 1)]
    return report(scores, len(versions), threshold)


async def analyse_async(versions: list[str], threshold: float) -> dict:
    """``analyse`` for callers on the event loop (see ``similarity_async``)."""
    scores = [await similarity_async(versions[i], versions[i + 1]) for i in range(len(versions) - 1)]
    return report(scores, len(versions), threshold)


def report(
    scores: list[float],
    n_versions: int,
    threshold: float,
    critic: dict[int, float | None] | None = None,
    min_score: float | None = None,
) -> dict:
    """The convergence report for a slot whose consecutive-version similarities are ``scores`` and whose versions
    the critic scored as ``critic`` says (version -> score): both side by side, per version, in ``by_version``."""
    pairs = [{"from": i, "to": i + 1, "similarity": round(s, 6)} for i, s in enumerate(scores)]
    last = pairs[-1]["similarity"] if pairs else None
    critic = critic or {}
    given = [(v, s) for v, s in sorted(critic.items()) if s is not None]
    return {
        "versions": n_versions,
        "threshold": threshold,
        "similarities": pairs,
        "latest_similarity": last,
        "converged": last is not None and last >= threshold,
        "scores": [{"version": v, "score": s} for v, s in sorted(critic.items())],
        "latest_score": given[-1][1] if given else None,
        "best_score": max(s for _, s in given) if given else None,
        "min_score": min_score,
        "by_version": [
            {
                "version": k,
                "similarity_to_previous": pairs[k - 1]["similarity"] if 0 < k <= len(pairs) else None,
                "score": critic.get(k),
            }
            for k in range(n_versions)
        ],
    }
