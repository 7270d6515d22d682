"""No request can stall a replica or grow its memory without bound: a worst-case ``diff`` (two 100,000-character
versions, fully different) and a flood of distinct big revisions run while another session steps, and this one
event loop keeps serving it. Plus the word diff's own guarantees (format, correctness, bounded work) and the
bounded word cache."""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import os
import random
import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rapidfuzz.distance import Indel

from redraft.graph import convergence, worddiff
from redraft.graph.convergence import WordCache, normalise_words, similarity
from redraft.graph.worddiff import opcodes, word_diff
from redraft.server.app import create_server
from tests.clients import PlainClient as Client
from tests.conftest import make_settings

LAG_BOUND_S = 0.1
# RSS growth over the whole test (~50 MB measured). Before: +143 MB, the word cache keeping every distinct
# revision's normalised words (~18 MB each here), and a 58 s stall.
RSS_BOUND_MB = 120


def rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def random_words(seed: int, n: int, alphabet: str = "abcdefghijklmnopqrstuvwxyz") -> str:
    """~2n characters of one-letter words: every word recurs, so nothing is unique and nothing lines up (difflib's
    worst case, and the most cells for an exact indel distance)."""
    rng = random.Random(seed)
    return " ".join(rng.choice(alphabet) for _ in range(n))


def expanding(seed: int) -> str:
    """100,000 characters that NFKC expands up to 18-fold into ~200,000 words, distinct per seed, and unlike the
    previous seed's (so a flood of them never converges)."""
    return f"{seed} " + ("\ufdfa " if seed % 2 else "\ufdfb ") * 49_990


async def _call(client: Client, tool: str, **arguments):
    return (await client.call_tool(tool, arguments)).structured_content


@contextlib.contextmanager
def ahead_of_other_processes():
    """Run this thread, and the threads it starts (Linux nice values are per thread and inherited), ahead of the
    machine's other processes where allowed (root or CAP_SYS_NICE, as in CI): the bound is about what this process's
    own requests do to its event loop, and the suite's other worker shares the two cores. Elsewhere it runs as is."""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -10)
    except OSError:
        yield
        return
    try:
        yield
    finally:
        os.setpriority(os.PRIO_PROCESS, 0, before)


@pytest.mark.solo
async def test_a_worst_case_diff_and_a_revision_flood_stall_no_other_session(tmp_path, stub):
    with ahead_of_other_processes():
        await _worst_case_diff_and_flood(tmp_path, stub)


async def _worst_case_diff_and_flood(tmp_path, stub):
    settings_ = make_settings(str(tmp_path / "redraft.sqlite"), stub)
    convergence.WORD_CACHE.clear()
    async with Client(create_server(settings_)) as client:
        # a thread with two 100,000-character versions that share nothing in order
        big = (await _call(client, "create_session"))["session_id"]
        await _call(client, "draft", session_id=big, query="Big texts.", max_loops=10)
        for seed in (1, 2):
            await _call(client, "critique", session_id=big, text="Rewrite it.")
            await _call(client, "revise", session_id=big, text=random_words(seed, 49_999))
        flood = (await _call(client, "create_session"))["session_id"]
        await _call(client, "draft", session_id=flood, query="Flood.", max_loops=1000)
        victim = (await _call(client, "create_session"))["session_id"]

        lags: list[float] = []
        peak = [rss_mb()]
        start_rss = peak[0]
        done = asyncio.Event()

        async def watch() -> None:
            while not done.is_set():
                t = time.perf_counter()
                await asyncio.sleep(0.01)
                lags.append(time.perf_counter() - t - 0.01)
                peak.append(rss_mb())

        async def revision_flood() -> None:
            for seed in range(8):
                await _call(client, "critique", session_id=flood, text="Again.")
                await _call(client, "revise", session_id=flood, text=expanding(seed))

        watcher = asyncio.create_task(watch())
        diff_task = asyncio.create_task(_call(client, "diff", session_id=big, from_version=1, to_version=2))
        flood_task = asyncio.create_task(revision_flood())
        await asyncio.sleep(0.05)
        steps = []
        while not (diff_task.done() and flood_task.done()) or not steps:
            t = time.perf_counter()
            result = await _call(client, "refine", session_id=victim, query=f"Victim {len(steps)}.")
            assert result["phase"] == "done"
            steps.append(time.perf_counter() - t)
        diffed, _ = await asyncio.gather(diff_task, flood_task)
        done.set()
        await watcher

    print(f"max lag {max(lags) * 1000:.0f} ms, RSS +{max(peak) - start_rss:.0f} MB, victim steps {steps}")
    assert max(lags) < LAG_BOUND_S, f"event loop stalled {max(lags) * 1000:.0f} ms"
    assert max(peak) - start_rss < RSS_BOUND_MB, f"RSS grew {max(peak) - start_rss:.0f} MB"
    assert convergence.WORD_CACHE.bytes <= convergence.WORD_CACHE.max_bytes
    text = diffed["diff"]
    assert text.startswith("--- version 1\n+++ version 2\n@@ -1,")
    assert sum(line.startswith("-") for line in text.splitlines()) == 49_999 + 1  # every old word, plus the header
    assert 0 <= diffed["similarity"] < 0.5


WORDS = st.lists(st.sampled_from("the a cat dog sat on mat and ran far".split()), max_size=60)


def assert_turns_into(x: list[str], y: list[str]) -> None:
    codes = opcodes(x, y)
    assert [w for _, i1, i2, _, _ in codes for w in x[i1:i2]] == x
    assert [w for _, _, _, j1, j2 in codes for w in y[j1:j2]] == y
    assert all(x[i1:i2] == y[j1:j2] for tag, i1, i2, j1, j2 in codes if tag == "equal")


@settings(max_examples=300, deadline=None)
@given(WORDS, WORDS)
def test_word_diff_opcodes_turn_one_text_into_the_other(x, y):
    assert_turns_into(x, y)


def test_word_diff_is_correct_on_its_anchor_and_budget_paths(monkeypatch):
    monkeypatch.setattr(worddiff, "EXACT_RANGE_CELLS", 50)  # force anchors, and replacements when none are left
    rng = random.Random(11)
    for _ in range(40):
        vocab = rng.choice([3, 40, 5000])
        x = [f"w{rng.randrange(vocab)}" for _ in range(rng.randrange(3000))]
        y = list(x)
        for _ in range(rng.randrange(200)):
            at = rng.randrange(len(y) + 1)
            y[at : at + rng.randrange(4)] = [f"w{rng.randrange(vocab)}" for _ in range(rng.randrange(4))]
        assert_turns_into(x, y)
    monkeypatch.setattr(worddiff, "WORK_FLOOR", 0)
    monkeypatch.setattr(worddiff, "WORK_PER_WORD", 1)  # budget spent early: the rest is reported as replaced
    x = [f"u{i}" for i in range(3000)]
    assert_turns_into(x, x[::-1])


@pytest.mark.parametrize(("words", "vocabulary"), [(3000, 400), (12_000, 30_000)])  # exact path; anchor path
def test_word_diff_keeps_the_unified_format_and_matches_difflib_on_small_edits(words, vocabulary):
    rng = random.Random(7)
    old = [f"w{rng.randrange(vocabulary)}" for _ in range(words)]
    new = list(old)
    for _ in range(25):
        new[rng.randrange(len(new))] = "EDITED"
    for _ in range(10):
        new.insert(rng.randrange(len(new)), "ADDED")
    ours = word_diff(" ".join(old), " ".join(new), 0, 1)
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    theirs = ["--- version 0", "+++ version 1"]
    for group in matcher.get_grouped_opcodes(3):
        i1, i2, j1, j2 = group[0][1], group[-1][2], group[0][3], group[-1][4]
        theirs.append(f"@@ -{i1 + 1},{i2 - i1} +{j1 + 1},{j2 - j1} @@")
        for tag, p1, p2, q1, q2 in group:
            if tag == "equal":
                theirs.extend(" " + w for w in old[p1:p2])
            else:
                theirs.extend("-" + w for w in old[p1:p2])
                theirs.extend("+" + w for w in new[q1:q2])
    changed = sum(line[0] in "+-" for line in ours.splitlines()[2:])
    assert changed <= sum(line[0] in "+-" for line in theirs[2:]) + 4  # as fine-grained as difflib's
    assert ours.splitlines()[0:2] == ["--- version 0", "+++ version 1"]
    assert word_diff("same words here", "same words here", 0, 0) == "--- version 0\n+++ version 0"


def test_word_diff_work_is_bounded_on_adversarial_input():
    # reversed unique words: patience anchors peel one word per level, quadratic without the work budget
    n = 20_000
    old = " ".join(f"u{i}" for i in range(n))
    new = " ".join(f"u{i}" for i in reversed(range(n)))
    started = time.perf_counter()
    text = word_diff(old, new, 0, 1)
    assert time.perf_counter() - started < 10
    assert text.count("\n-") >= n - 1 and text.count("\n+") >= n - 1


def test_similarity_is_exact_where_it_matters():
    rng = random.Random(3)
    base = [f"w{rng.randrange(2000)}" for _ in range(30_000)]  # 30,000 words: past the exact-cell budget
    near = list(base)
    for _ in range(150):
        near[rng.randrange(len(near))] = "x"
    for _ in range(40):
        del near[rng.randrange(len(near))]
    a, b = " ".join(base), " ".join(near)
    assert similarity(a, b) == Indel.normalized_similarity(normalise_words(a), normalise_words(b))
    small_a, small_b = random_words(1, 2000), random_words(2, 2000)
    assert similarity(small_a, small_b) == Indel.normalized_similarity(
        normalise_words(small_a), normalise_words(small_b)
    )
    # very different and huge: a lower bound, never above the truth
    huge_a, huge_b = random_words(4, 40_000), random_words(5, 40_000)
    exact = Indel.normalized_similarity(normalise_words(huge_a), normalise_words(huge_b))
    assert exact - 0.02 <= similarity(huge_a, huge_b) <= exact


def test_word_cache_is_bounded_by_bytes():
    cache = WordCache(max_bytes=16 * 2**20)
    for seed in range(20):
        text = random_words(seed, 20_000)
        cache.put(text, tuple(text.split()))
        assert cache.bytes <= cache.max_bytes
    assert cache.get(random_words(19, 20_000)) is not None  # the newest stays
    assert cache.get(random_words(0, 20_000)) is None  # the oldest went
    cache.put("x" * 10, tuple(["x"] * 200_000))  # one entry bigger than a quarter of the budget: not kept
    assert cache.get("x" * 10) is None
