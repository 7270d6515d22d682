"""Scored critiques cost per step (issue 21 item 2): refine with structured critiques (the critic's JSON asked for,
parsed, rendered, scored) against prose critiques, in the same run, on the same saver.

Two rows: the HTTP stub (tests/stub_llm.py) through the real langchain-openai client, where the issue's goal applies
(scored critiques slow a step by at most 5%), and the in-process fake model, where the model costs nothing and the
ratio shows the parsing and scoring alone. Runs alternate between the two formats, and the figure is the ratio of
their median per-step times. ``python -m bench.scoring`` runs it alone.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.fake import FakeProvider  # noqa: E402
from redraft.graph.checkpointer import open_persistence  # noqa: E402
from redraft.graph.runner import Runner  # noqa: E402
from redraft.settings import load_settings  # noqa: E402
from tests.stub_llm import StubLLM  # noqa: E402

GOAL = 1.05
LOOPS = 8
STEPS = 1 + 2 * LOOPS
# The stub critic: prose ("Round k: ...") or the scored JSON the structured critic asks for, same words either way.
FORMATS = {"text": {"critic_format": "prose"}, "structured": {"critic_format": "json", "critic_scores": [5]}}


async def _per_step(runner: Runner, configure) -> float:
    configure()
    t0 = time.perf_counter()
    await runner.refine(
        f"bench-{uuid.uuid4().hex[:10]}", "generic", "Bench query.", max_loops=LOOPS, similarity_threshold=1.0
    )
    return (time.perf_counter() - t0) / STEPS


async def _measure(make_runner, configure, repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"text": [], "structured": []}
    async with make_runner("text") as text_runner, make_runner("structured") as scored_runner:
        runners = {"text": text_runner, "structured": scored_runner}
        for fmt, runner in runners.items():  # warm-up: clients, prepared statements, caches
            await _per_step(runner, lambda f=fmt: configure(f))
        for i in range(repeats):
            order = ("text", "structured") if i % 2 == 0 else ("structured", "text")
            for fmt in order:
                times[fmt].append(await _per_step(runners[fmt], lambda f=fmt: configure(f)))
    return times


def _row(name: str, times: dict[str, list[float]]) -> tuple[list, float]:
    text, scored = statistics.median(times["text"]), statistics.median(times["structured"])
    ratio = scored / text
    return [name, f"{text * 1000:.2f}", f"{scored * 1000:.2f}", f"{ratio:.3f}x"], ratio


async def scoring(db_dir: str, repeats: int = 15) -> dict:
    stub = StubLLM().start()
    try:

        def settings(fmt: str, db: str, **extra):
            return load_settings(
                database_url=db, base_url=stub.base_url, model="stub", critique_format=fmt, max_retries=0, **extra
            )

        def stub_runner(fmt: str):
            return _runner(settings(fmt, str(Path(db_dir) / f"scoring-stub-{fmt}.sqlite")))

        def configure_stub(fmt: str) -> None:
            stub.configure(**FORMATS[fmt])

        stub_times = await _measure(stub_runner, configure_stub, repeats)
    finally:
        stub.stop()

    fakes: dict[str, FakeProvider] = {}

    def fake_runner(fmt: str):
        s = settings_fake(fmt, str(Path(db_dir) / f"scoring-fake-{fmt}.sqlite"))
        fakes[fmt] = FakeProvider(s, **FORMATS[fmt])
        return _runner(s, fakes[fmt])

    fake_times = await _measure(fake_runner, lambda fmt: None, repeats)
    row_stub, ratio = _row("HTTP stub (langchain-openai client)", stub_times)
    row_fake, fake_ratio = _row("in-process fake model (parsing and scoring alone)", fake_times)
    return {
        "title": "Scored critiques: time per step vs prose critiques (issue 21)",
        "what": f"Median time per step of a {LOOPS}-loop refine on SQLite with structured critiques (the critic's "
        "JSON asked for with a response_format, parsed tolerantly, rendered to text, its score logged) over the same "
        "refine with prose critiques, runs alternating, in the same run. The stub critic answers the same words "
        "either way, as JSON or as prose. The fake-model row leaves out HTTP: the ratio there is the parsing and "
        "scoring alone, against a step that costs almost nothing.",
        "headers": ["model", "prose ms/step", "scored ms/step", "ratio"],
        "rows": [row_stub, row_fake],
        "target": f"<= {GOAL:.2f}x on the stub",
        "verdict": f"{ratio:.3f}x on the stub: "
        + ("met" if ratio <= GOAL else "NOT met")
        + f" (in-process fake: {fake_ratio:.3f}x)",
    }


def settings_fake(fmt: str, db: str):
    return load_settings(database_url=db, base_url="http://unused.invalid/v1", model="fake", critique_format=fmt)


class _runner:
    """An async context manager: a Runner over its own persistence."""

    def __init__(self, settings, models=None) -> None:
        self.settings, self.models = settings, models

    async def __aenter__(self) -> Runner:
        self._cm = open_persistence(self.settings)
        persistence = await self._cm.__aenter__()
        return Runner(persistence, self.settings, self.models)

    async def __aexit__(self, *exc) -> None:
        await self._cm.__aexit__(*exc)


if __name__ == "__main__":  # python -m bench.scoring
    with tempfile.TemporaryDirectory() as tmp:
        section = asyncio.run(scoring(tmp))
    for row in section["rows"]:
        print(" | ".join(str(c) for c in row))
    print(f"target {section['target']}: {section['verdict']}")
