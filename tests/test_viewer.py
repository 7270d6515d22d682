"""The time-travel viewer (server/viewer/), end to end.

Browser tests drive Debian's ``chromium`` through Playwright (``executable_path``: no browser download) against a real
``redraft ui`` subprocess, with sessions made by a stub refine through a real MCP client. Without Chromium they skip
with the reason; with ``CI=true`` they fail instead. HTTP-level tests check auth, CSRF, escaping and paging.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import async_playwright, expect

from tests.clients import PlainClient
from tests.conftest import IN_CI, make_settings
from tests.servers import REDRAFT, free_port, server_env, wait_for_port

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


class Viewer:
    """A ``redraft ui`` (or ``redraft serve --transport http``) subprocess and its first line of output."""

    def __init__(self, env: dict[str, str], log: Path, command: str = "ui") -> None:
        self.port = free_port()
        args = ["ui", "--port", str(self.port)] if command == "ui" else ["serve", "--transport", "http"]
        args += [] if command == "ui" else ["--port", str(self.port)]
        self.proc = subprocess.Popen([REDRAFT, *args], env=env, stdout=subprocess.PIPE, stderr=log.open("ab"))
        self.link = self.proc.stdout.readline().decode().strip() if command == "ui" else ""
        wait_for_port(self.port, self.proc)
        self.base = f"http://127.0.0.1:{self.port}"

    @property
    def mcp(self) -> str:
        return f"{self.base}/mcp"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


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


async def tool(url: str, name: str, **arguments) -> dict:
    async with PlainClient(url) as client:
        return (await client.call_tool(name, arguments)).structured_content


async def session_with_refine(url: str, companion: str = "generic", **options) -> str:
    sid = (await tool(url, "create_session"))["session_id"]
    await tool(url, "refine", session_id=sid, companion=companion, query="Explain write-ahead logging.", **options)
    return sid


async def history(url: str, sid: str, companion: str = "generic") -> list[dict]:
    return (await tool(url, "history", session_id=sid, companion=companion, limit=200))["checkpoints"]


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


TOKENS = '{"tok-alice": "alice", "tok-bob": "bob"}'


@pytest.fixture
def authed(tmp_path, stub) -> Iterator[Viewer]:
    env = server_env(str(tmp_path / "auth.sqlite"), stub.base_url, REDRAFT_AUTH_TOKENS=TOKENS)
    v = Viewer(env, tmp_path / "auth.log", command="serve")
    yield v
    v.stop()


async def authed_tool(v: Viewer, token: str, name: str, **arguments) -> dict:
    from fastmcp.client.auth import BearerAuth

    async with PlainClient(v.mcp, auth=BearerAuth(token)) as client:
        return (await client.call_tool(name, arguments)).structured_content


def csrf_from(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


@contextlib.asynccontextmanager
async def signed_in(v: Viewer, token: str) -> AsyncIterator[httpx.AsyncClient]:
    """A browser-like client that signed in through the form: the token now travels in the HttpOnly cookie only."""
    async with httpx.AsyncClient(base_url=v.base, follow_redirects=False, timeout=30) as http:
        csrf = csrf_from((await http.get("/ui/login")).text)
        response = await http.post("/ui/login", data={"csrf": csrf, "token": token})
        assert response.status_code == 303, response.text
        cookie = response.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
        yield http


async def test_auth_is_required_and_scoped(authed):
    alice = (await authed_tool(authed, "tok-alice", "create_session"))["session_id"]
    bob = (await authed_tool(authed, "tok-bob", "create_session"))["session_id"]
    async with httpx.AsyncClient(base_url=authed.base, follow_redirects=False, timeout=30) as anon:
        assert (await anon.get("/ui")).status_code == 303 and (await anon.get("/ui")).headers["location"] == "/ui/login"
        assert (await anon.get(f"/ui/s/{alice}/generic")).status_code == 303
        assert (await anon.get(f"/ui/s/{alice}/generic/live")).status_code == 401
        assert (await anon.post(f"/ui/s/{alice}/generic/do/resume", data={})).status_code == 401
        csrf = csrf_from((await anon.get("/ui/login")).text)
        assert (await anon.post("/ui/login", data={"csrf": csrf, "token": "wrong"})).status_code == 401
        assert (await anon.get("/ui?token=tok-alice")).status_code == 401  # never a token in a URL
        headers = {"authorization": "Bearer tok-alice"}
        listing = await anon.get("/ui", headers=headers)  # a script may send the header instead of the cookie
        assert listing.status_code == 200 and alice in listing.text and bob not in listing.text
    async with signed_in(authed, "tok-bob") as http:
        listing = (await http.get("/ui")).text
        assert bob in listing and alice not in listing
        assert (await http.get(f"/ui/s/{alice}/generic")).status_code == 404  # another principal's session: unknown
        csrf = csrf_from((await http.get("/ui")).text)
        assert (await http.post("/ui/logout", data={"csrf": csrf})).status_code == 303
        http.cookies.delete("redraft_ui_auth")
        assert (await http.get("/ui")).status_code == 303


async def test_actions_need_the_csrf_token_and_text_is_escaped(authed):
    sid = (await authed_tool(authed, "tok-alice", "create_session"))["session_id"]
    await authed_tool(authed, "tok-alice", "refine", session_id=sid, query="Explain WAL.", max_loops=3)
    checkpoints = (await authed_tool(authed, "tok-alice", "history", session_id=sid, limit=50))["checkpoints"]
    revise = next(c for c in checkpoints if c["node"] == "revise" and c["phase"] == "ready_to_critique")
    evil = "<script>alert(1)</script> & more"
    async with signed_in(authed, "tok-alice") as http:
        page = await http.get(f"/ui/s/{sid}/generic")
        assert page.status_code == 200
        assert "script-src 'self'" in page.headers["content-security-policy"]
        csrf = csrf_from(page.text)
        form = {"checkpoint_id": revise["checkpoint_id"], "revision": evil}
        target = f"/ui/s/{sid}/generic/do/fork"
        assert (await http.post(target, data=form)).status_code == 403  # no token
        assert (await http.post(target, data={**form, "csrf": "x" * 43})).status_code == 403  # a wrong one
        other_site = {"origin": "https://evil.example"}
        assert (await http.post(target, data={**form, "csrf": csrf}, headers=other_site)).status_code == 403
        unchanged = (await authed_tool(authed, "tok-alice", "history", session_id=sid, limit=50))["checkpoints"]
        assert len(unchanged) == len(checkpoints)
        assert (await http.post(target, data={**form, "csrf": csrf})).status_code == 303
        html = (await http.get(f"/ui/s/{sid}/generic")).text
        assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in html
        assert "<script>alert" not in html
        # a refused action shows the tool's own error, and changes nothing
        start = checkpoints[-1]["checkpoint_id"]
        wrong = {"checkpoint_id": start, "critique": "too early", "csrf": csrf}
        assert (await http.post(target, data=wrong)).status_code == 303
        html = (await http.get(f"/ui/s/{sid}/generic")).text
        assert 'class="action error"' in html and "wrong_phase: " in html
    forked = (await authed_tool(authed, "tok-alice", "history", session_id=sid, limit=50))["checkpoints"]
    assert len(forked) == len(checkpoints) + 1 and forked[0]["edited"]


async def test_open_server_lists_only_sessions_opened_here(tmp_path, stub):
    v = Viewer(server_env(str(tmp_path / "open.sqlite"), stub.base_url), tmp_path / "open.log", command="serve")
    try:
        sid = await session_with_refine(v.mcp, max_loops=2)
        async with httpx.AsyncClient(base_url=v.base, follow_redirects=False, timeout=30) as http:
            assert (await http.get("/ui/login")).status_code == 303  # nothing to sign in to
            assert sid not in (await http.get("/ui")).text  # a session id is a capability: not listed to anyone
            assert (await http.get(f"/ui/s/{sid}/generic")).status_code == 200
            assert sid in (await http.get("/ui")).text  # ... until this browser opened it
            assert (await http.get("/ui/s/00000000-0000-4000-8000-000000000000/generic")).status_code == 404
    finally:
        v.stop()


async def test_timeline_pages_stay_fast_past_1000_checkpoints(tmp_path, stub):
    from bench.fake import FakeProvider
    from redraft.graph.checkpointer import open_persistence
    from redraft.graph.runner import Runner, thread_id_for
    from redraft.server.sessions import SessionStore

    db = str(tmp_path / "long.sqlite")
    settings = make_settings(db, stub)
    async with open_persistence(settings) as p:
        sid = (await SessionStore(p.db, p.saver, 3600, 100).create("anon"))["session_id"]
        # the pages are under test, not the model: the thread is built with the stub's answers in process (the same
        # texts, without 1,021 HTTP round trips), which takes seconds instead of most of a minute
        runner = Runner(p, settings, FakeProvider(settings, changes=[10], draft_words=60, critique_words=8))
        t0 = time.perf_counter()
        await runner.refine(thread_id_for(sid, "generic"), "generic", "Long.", max_loops=510, similarity_threshold=1.0)
        print(f"built in {time.perf_counter() - t0:.1f}s")
    v = Viewer(server_env(db, stub.base_url), tmp_path / "long.log", command="serve")
    try:
        async with httpx.AsyncClient(base_url=v.base, follow_redirects=False, timeout=60) as http:
            url, pages, times = f"/ui/s/{sid}/generic", 0, []
            while url:
                t0 = time.perf_counter()
                response = await http.get(url)
                times.append(time.perf_counter() - t0)
                assert response.status_code == 200
                pages += 1
                older = re.search(r'href="([^"]+)" id="older"', response.text)
                url = older.group(1).replace("&amp;", "&") if older else None
        print(
            f"{pages} pages: first {times[0]:.3f}s, median {sorted(times)[len(times) // 2]:.3f}s, max {max(times):.3f}s"
        )
        assert pages >= 1000 // 50  # 20+ pages of 50
        first, deepest = min(times[:3]), max(times)
        # a page costs about the same at the end of the thread as at its start (generous: a loaded 2-core machine)
        assert deepest < max(6 * first, 1.5), (first, deepest, times)
    finally:
        v.stop()


def test_viewer_assets_are_package_data():
    """Every template and static file is matched by pyproject's package-data for the viewer, so the wheel ships it."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parent.parent
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = globs["redraft.server.viewer"]
    package = root / "server" / "viewer"
    assets = [p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file() and p.suffix != ".py"]
    assets = [a for a in assets if "__pycache__" not in a]
    assert {"templates/thread.html", "static/viewer.js", "static/viewer.css"} <= set(assets)
    assert all(any(fnmatch.fnmatch(a, g) for g in patterns) for a in assets), (assets, patterns)


def test_chart_shows_similarity_and_score_with_the_stop_reason():
    """The scores log's two kinds of entries (the revise node's similarity per revision, the critic's 0-10 score per
    version critiqued, nodes/scoring.py) are read per iteration and drawn on one chart; a later record wins."""
    from redraft.server.viewer.data import _scores, chart

    state = {
        "scores": [
            {"slot": 0, "iteration": 0, "score": 4, "critique": 1},
            {"slot": 0, "iteration": 1, "similarity": 0.91},
            {"slot": 0, "iteration": 1, "score": 6, "critique": 2},
            {"slot": 0, "iteration": 2, "similarity": 0.95},
            {"slot": 0, "iteration": 2, "similarity": 0.97},  # an edited revision: the later record wins
            {"slot": 0, "iteration": 2, "score": None, "critique": 3},  # a prose critique: no score
            {"slot": 1, "iteration": 1, "similarity": 0.5},  # another query
        ]
    }
    per = _scores(state, 0)
    assert per == {0: {"score": 4.0}, 1: {"similarity": 0.91, "score": 6.0}, 2: {"similarity": 0.97}}
    points = [{"iteration": k, **v} for k, v in sorted(per.items())]
    drawn = chart(points, 0.96, "converged")
    assert [p["v"] for p in drawn["similarity"]] == [0.91, 0.97]
    assert [p["v"] for p in drawn["score"]] == [4.0, 6.0] and drawn["score_scale"] == 10.0
    assert [t["label"] for t in drawn["score_ticks"]] == ["0", "5", "10"]
    assert drawn["score"][1]["y"] < drawn["score"][0]["y"]  # a higher score is drawn higher, on its own axis
    assert [t["label"] for t in drawn["xticks"]] == ["0", "1", "2"]
    assert drawn["stop"] == {"x": drawn["xticks"][-1]["x"], "label": "converged"}
    assert drawn["threshold"]["v"] == 0.96
    assert chart([], 0.9, None) is None
