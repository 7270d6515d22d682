"""The time-travel viewer (server/viewer/) in a browser, end to end.

Browser tests drive Debian's ``chromium`` through Playwright (``executable_path``: no browser download) against a real
``redraft ui`` subprocess, with sessions made by a stub refine through a real MCP client. Without Chromium they skip
with the reason; with ``CI=true`` they fail instead. HTTP-level tests (auth, CSRF, escaping, paging) are in
tests/test_viewer_http.py.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import async_playwright, expect

from tests.conftest import IN_CI
from tests.servers import server_env
from tests.viewer_support import Viewer, history, session_with_refine, tool

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
# servers and a browser in subprocesses, a 1,000-checkpoint thread: minutes on a loaded 2-core machine
pytestmark = pytest.mark.timeout(600)
DOCS = Path(__file__).resolve().parent.parent / "docs"


def chromium_path() -> str:
    explicit = os.environ.get("REDRAFT_TEST_CHROMIUM")
    found = explicit or next((p for p in map(shutil.which, CHROMIUM_CANDIDATES) if p), None)
    if not found:
        reason = "no Chromium found (apt-get install -y chromium, or set REDRAFT_TEST_CHROMIUM)"
        if IN_CI:
            pytest.fail(reason + " -- CI=true: the viewer's browser tests must run.")
        pytest.skip(reason)
    return found


@pytest.fixture
def viewer(tmp_path, stub) -> Iterator[Viewer]:
    v = Viewer(server_env(str(tmp_path / "ui.sqlite"), stub.base_url), tmp_path / "ui.log")
    yield v
    v.stop()


@pytest.fixture
async def tab(viewer) -> AsyncIterator:
    """A Chromium page signed in to ``viewer`` (pytest-playwright's own ``page`` fixture would download a browser)."""
    executable = chromium_path()
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        context = await browser.new_context(viewport={"width": 1400, "height": 1000})
        pg = await context.new_page()
        pg.set_default_timeout(20_000)
        await pg.goto(viewer.link)  # /ui/login#key=...: the page trades the key for its cookie
        await pg.wait_for_url(f"{viewer.base}/ui")
        yield pg
        await browser.close()


async def rows(pg) -> int:
    return await pg.locator("#timeline tbody tr").count()


async def shot(pg, name: str) -> None:
    if os.environ.get("REDRAFT_VIEWER_SCREENSHOTS"):  # refreshes docs/viewer-*.png
        await pg.screenshot(path=str(DOCS / f"viewer-{name}.png"), full_page=True)


# --- the browser scenario -------------------------------------------------------------------------------------------


async def test_timeline_diff_fork_and_resume(viewer, tab, stub):
    stub.configure(critic_format="json", critic_scores=[4, 6, 7, 8])  # scored critiques (nodes/scoring.py)
    sid = await session_with_refine(viewer.mcp, max_loops=4)
    checkpoints = await history(viewer.mcp, sid)
    await tab.goto(f"{viewer.base}/ui")
    await tab.click(f"text={sid}")
    await tab.wait_for_selector("#timeline")
    # the timeline: one row per checkpoint, newest first, with node, slot, iteration and branch
    assert await rows(tab) == len(checkpoints)
    first = tab.locator("#timeline tbody tr").first
    assert await first.get_attribute("data-checkpoint") == checkpoints[0]["checkpoint_id"]
    assert "converged" in await first.inner_text()
    assert await tab.locator("#stop-reason").inner_text() == "converged"
    assert await tab.locator("#chart svg circle").count() == 3  # similarity at iterations 1..3
    assert "stop: converged" in await tab.locator("#chart").inner_text()
    assert await tab.locator("#chart svg rect").count() >= 3  # the critic's score per version critiqued
    assert "critic's score" in await tab.locator("#chart figcaption").inner_text()
    await shot(tab, "thread")

    # the word diff of the draft against revision 1: the same similarity the MCP diff tool reports
    await tab.select_option("#diff-a", "0")
    await tab.wait_for_url(re.compile(r"a=0"))
    await tab.select_option("#diff-b", "1")
    await tab.wait_for_url(re.compile(r"b=1"))
    expected = await tool(viewer.mcp, "diff", session_id=sid, from_version=0, to_version=1)
    assert f"similarity {expected['similarity']:.4f}" in await tab.locator("#diff").inner_text()
    assert await tab.locator("#diff-text del").count() > 0
    assert await tab.locator("#diff-text ins").count() > 0

    # fork from checkpoint 3 (the fourth, counting from 0: the first critique) with an edited critique
    chronological = sorted(checkpoints, key=lambda c: c["checkpoint_id"])
    third = chronological[3]
    assert third["node"] == "critique" and third["phase"] == "needs_revision"
    await tab.click(f"#timeline tr[data-checkpoint='{third['checkpoint_id']}'] a")
    await tab.fill("#fork-text", "Edited: cut the second paragraph.")
    await tab.click("#fork-submit")
    await tab.wait_for_selector("#action.ok")
    assert "b2" in await tab.locator("#timeline tbody tr").first.inner_text()  # the new branch, now the head
    assert await tab.locator("#timeline .branch", has_text="b1").count() > 0  # the original stays listed
    assert "Edited: cut the second paragraph." in await tab.locator("#at").inner_text()
    after_fork = await history(viewer.mcp, sid)
    assert after_fork[0]["edited"] and after_fork[0]["branch"] != checkpoints[0]["branch"]

    # resume the fork: the revision answers the edited critique, and the run goes on to convergence
    await tab.click("#resume")
    await expect(tab.locator("#stop-reason")).not_to_have_text("-", timeout=60_000)
    status = await tool(viewer.mcp, "status", session_id=sid)
    assert status["stop_reason"] == await tab.locator("#stop-reason").inner_text()
    revise_prompts = stub.prompts("revise")
    assert "Edited: cut the second paragraph." in revise_prompts[-len(status["slot"]["revision"])][-1]["content"]

    # branches side by side: both lines, the fork's with its edited critique
    await tab.click("#branches-link")
    columns = tab.locator(".branch-col")
    assert await columns.count() == 2
    assert "Edited: cut the second paragraph." in await columns.first.inner_text()
    assert "forked at" in await columns.first.inner_text() and "original line" in await columns.last.inner_text()
    await shot(tab, "branches")


async def test_script_in_a_revision_is_shown_not_run(viewer, tab):
    sid = await session_with_refine(viewer.mcp, max_loops=4)
    revise = next(
        c for c in sorted(await history(viewer.mcp, sid), key=lambda c: c["checkpoint_id"]) if c["node"] == "revise"
    )
    evil = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> plain words'
    await tab.goto(f"{viewer.base}/ui/s/{sid}/generic?at={revise['checkpoint_id']}")
    await tab.fill("#fork-text", evil)
    await tab.click("#fork-submit")
    await tab.wait_for_selector("#action.ok")
    version = tab.locator(".version pre.text", has_text="window.__pwned = 1")
    assert await version.count() >= 1
    assert "<script>window.__pwned = 1</script>" in await version.first.inner_text()  # shown as text
    assert await tab.evaluate("window.__pwned === undefined")  # and never run


async def test_gate_decisions_from_the_page(viewer, tab):
    sid = (await tool(viewer.mcp, "create_session"))["session_id"]
    view = await tool(viewer.mcp, "refine", session_id=sid, companion="summary", query="Summarise WAL.")
    assert view["pending_gate"]["gate"] == "critique"
    await tab.goto(f"{viewer.base}/ui/s/{sid}/summary")
    await tab.wait_for_selector("#gate-form")
    await shot(tab, "gate")
    # replace the critique with mine: the next gate (before the revision) shows it
    await tab.check("#gate-form input[value=replace]")
    await tab.fill("#gate-form textarea[name=text]", "My own critique: shorter, please.")
    await tab.click("#gate-submit")
    await tab.wait_for_selector("#gate-form h3 >> text=revise")
    assert "My own critique: shorter, please." in await tab.locator("#gate-form").inner_text()
    # approve: the model revises, and the thread waits at the next critique gate
    await tab.click("#gate-submit")
    await tab.wait_for_selector("#gate-form h3 >> text=critique")
    status = await tool(viewer.mcp, "status", session_id=sid, companion="summary")
    assert status["slot"]["critique"] == ["My own critique: shorter, please."]
    assert len(status["slot"]["revision"]) == 1 and status["pending_gate"]["gate"] == "critique"


async def test_live_run_updates_and_cancel(viewer, tab, stub):
    sid = (await tool(viewer.mcp, "create_session"))["session_id"]
    stub.configure(latency_ms=400, changes=[10])
    run = await tool(
        viewer.mcp, "start_refine", session_id=sid, query="Explain WAL.", max_loops=40, similarity_threshold=1.0
    )
    for _ in range(150):  # the run's first checkpoints (it makes one every ~0.4 s)
        if len(await history(viewer.mcp, sid)) >= 3:
            break
        await asyncio.sleep(0.2)
    await tab.goto(f"{viewer.base}/ui/s/{sid}/generic")
    before = await rows(tab)
    await tab.evaluate("window.__same_page = true")
    # the page follows the run without being reloaded: the run's row, then new checkpoints
    await tab.wait_for_selector(f".run[data-run='{run['run_id']}']")
    await tab.locator("#timeline tbody tr").nth(before + 2).wait_for(timeout=60_000)
    assert await tab.evaluate("window.__same_page === true")
    await shot(tab, "live")
    # cancel it from the page: the run ends cancelled and its row goes away
    await tab.click("#cancel-run")
    await tab.wait_for_selector(".run", state="detached")
    assert (await tool(viewer.mcp, "run_status", run_id=run["run_id"]))["status"] == "cancelled"


# --- HTTP level: auth, CSRF, escaping, paging -----------------------------------------------------------------------
