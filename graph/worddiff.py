"""Word diffs of two versions in bounded time and memory, computed off the event loop.

The output is a unified diff with one word per line: ``--- version a`` / ``+++ version b`` headers, then ``@@`` hunks
with three words of context. difflib's matcher is quadratic in the number of words and pure Python (two 20,000-word
versions took 15 s), so the alignment is built here in steps that are each cheap:

1. the common prefix and suffix of a range are matched;
2. a range of up to ``EXACT_RANGE_CELLS`` (words x words) is aligned exactly, by a longest common subsequence
   (rapidfuzz, in C: a few milliseconds at most);
3. a larger range is split at its *anchors*: words that occur exactly once on each side, taken in the longest order
   they agree on (patience diff); the pieces between anchors are diffed the same way.

Every step is charged to a work budget proportional to the input. A range left when the budget is spent, or a large
one with no anchor, is reported as a replacement: the diff is still correct, only coarser there. Time and memory are
linear in the input times a small factor, and the work runs in a worker thread (``convergence.off_loop``).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterator, Sequence

from rapidfuzz.distance import Indel

from redraft.graph.convergence import encode_words, off_loop

EXACT_RANGE_CELLS = 16_000_000  # e.g. 4,000 x 4,000 words: ~10 ms and 2 MB at most
WORK_PER_WORD = 40  # work budget: this many steps per input word, plus a floor
WORK_FLOOR = 200_000

Opcode = tuple[str, int, int, int, int]


def matching_blocks(words_x: Sequence[str], words_y: Sequence[str]) -> list[tuple[int, int, int]]:
    """Blocks ``(i, j, n)`` with ``x[i:i+n] == y[j:j+n]``, increasing in both ``i`` and ``j``, merged."""
    x, y = encode_words(words_x, words_y)  # one code point per distinct word: C-speed slicing and matching
    budget = WORK_FLOOR + WORK_PER_WORD * (len(x) + len(y))
    blocks: list[tuple[int, int, int]] = []
    ranges = [(0, len(x), 0, len(y))]
    while ranges:
        a0, a1, b0, b1 = ranges.pop()
        head = 0
        while a0 + head < a1 and b0 + head < b1 and x[a0 + head] == y[b0 + head]:
            head += 1
        if head:
            blocks.append((a0, b0, head))
            a0, b0 = a0 + head, b0 + head
        tail = 0
        while a1 - tail > a0 and b1 - tail > b0 and x[a1 - tail - 1] == y[b1 - tail - 1]:
            tail += 1
        if tail:
            a1, b1 = a1 - tail, b1 - tail
            blocks.append((a1, b1, tail))
        n, m = a1 - a0, b1 - b0
        budget -= head + tail + n + m
        if not n or not m or budget <= 0:
            continue
        if n * m <= EXACT_RANGE_CELLS:
            for tag, i1, i2, j1, _ in Indel.opcodes(x[a0:a1], y[b0:b1]):
                if tag == "equal":
                    blocks.append((a0 + i1, b0 + j1, i2 - i1))
            continue
        budget -= 2 * (n + m)
        anchors = _anchors(x, a0, a1, y, b0, b1)
        previous_i, previous_j = a0, b0
        for i, j in anchors:
            blocks.append((i, j, 1))
            ranges.append((previous_i, i, previous_j, j))
            previous_i, previous_j = i + 1, j + 1
        if anchors:
            ranges.append((previous_i, a1, previous_j, b1))
    return _merge(sorted(blocks))


def _anchors(x: Sequence, a0: int, a1: int, y: Sequence, b0: int, b1: int) -> list[tuple[int, int]]:
    """Words unique on both sides of the range, as ``(i, j)`` pairs forming the longest chain increasing in both."""
    count_x, count_y = Counter(x[a0:a1]), Counter(y[b0:b1])
    where_y = {word: j for j, word in enumerate(y[b0:b1], b0) if count_y[word] == 1}
    pairs = [(i, where_y[word]) for i, word in enumerate(x[a0:a1], a0) if count_x[word] == 1 and word in where_y]
    # longest increasing subsequence of j (pairs are in increasing i): patience sorting with back links
    tails: list[int] = []  # tails[k]: the smallest j ending a chain of length k + 1
    ends: list[int] = []  # index into pairs of that chain's last pair
    back: list[int] = []
    for index, (_, j) in enumerate(pairs):
        k = bisect.bisect_left(tails, j)
        back.append(ends[k - 1] if k else -1)
        if k == len(tails):
            tails.append(j)
            ends.append(index)
        else:
            tails[k], ends[k] = j, index
    chain, index = [], ends[-1] if ends else -1
    while index >= 0:
        chain.append(pairs[index])
        index = back[index]
    return chain[::-1]


def _merge(blocks: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    merged: list[tuple[int, int, int]] = []
    for i, j, n in blocks:
        if merged and merged[-1][0] + merged[-1][2] == i and merged[-1][1] + merged[-1][2] == j:
            merged[-1] = (merged[-1][0], merged[-1][1], merged[-1][2] + n)
        else:
            merged.append((i, j, n))
    return merged


def opcodes(x: Sequence[str], y: Sequence[str]) -> list[Opcode]:
    """difflib-style opcodes (``equal``, ``replace``, ``delete``, ``insert``) turning ``x`` into ``y``."""
    codes: list[Opcode] = []
    i = j = 0
    for ai, bj, size in [*matching_blocks(x, y), (len(x), len(y), 0)]:
        tag = "replace" if i < ai and j < bj else "delete" if i < ai else "insert" if j < bj else ""
        if tag:
            codes.append((tag, i, ai, j, bj))
        i, j = ai + size, bj + size
        if size:
            codes.append(("equal", ai, i, bj, j))
    return codes


def grouped(codes: list[Opcode], context: int) -> Iterator[list[Opcode]]:
    """Hunks of changes with up to ``context`` equal words around them (difflib's ``get_grouped_opcodes``)."""
    codes = list(codes) or [("equal", 0, 1, 0, 1)]
    if codes[0][0] == "equal":
        tag, i1, i2, j1, j2 = codes[0]
        codes[0] = tag, max(i1, i2 - context), i2, max(j1, j2 - context), j2
    if codes[-1][0] == "equal":
        tag, i1, i2, j1, j2 = codes[-1]
        codes[-1] = tag, i1, min(i2, i1 + context), j1, min(j2, j1 + context)
    group: list[Opcode] = []
    for tag, i1, i2, j1, j2 in codes:
        if tag == "equal" and i2 - i1 > 2 * context:
            group.append((tag, i1, min(i2, i1 + context), j1, min(j2, j1 + context)))
            yield group
            group = []
            i1, j1 = max(i1, i2 - context), max(j1, j2 - context)
        group.append((tag, i1, i2, j1, j2))
    if group and not (len(group) == 1 and group[0][0] == "equal"):
        yield group


def word_diff(old: str, new: str, a: int, b: int, context: int = 3) -> str:
    """Unified diff of two versions, one word per line (words split on whitespace)."""
    x, y = old.split(), new.split()
    out = [f"--- version {a}", f"+++ version {b}"]
    for group in grouped(opcodes(x, y), context):
        i1, i2, j1, j2 = group[0][1], group[-1][2], group[0][3], group[-1][4]
        out.append(f"@@ -{i1 + 1},{i2 - i1} +{j1 + 1},{j2 - j1} @@")
        for tag, p1, p2, q1, q2 in group:
            if tag == "equal":
                out.extend(" " + w for w in x[p1:p2])
                continue
            out.extend("-" + w for w in x[p1:p2])
            out.extend("+" + w for w in y[q1:q2])
    return "\n".join(out)


async def word_diff_async(old: str, new: str, a: int, b: int, context: int = 3) -> str:
    """``word_diff`` in a worker thread: the event loop keeps serving every other session meanwhile."""
    return await off_loop(word_diff, old, new, a, b, context)
