"""The time-travel viewer (server/viewer/) over HTTP: auth and its scope, CSRF, escaping, what an open server lists,
paging past 1,000 checkpoints, packaged assets and the chart. The browser scenario is in tests/test_viewer.py."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.clients import PlainClient
from tests.conftest import make_settings
from tests.servers import server_env
from tests.viewer_support import Viewer, session_with_refine

# servers in subprocesses, a 1,000-checkpoint thread: minutes on a loaded 2-core machine
pytestmark = pytest.mark.timeout(600)


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
