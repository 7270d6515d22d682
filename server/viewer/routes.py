"""The viewer's pages and actions under ``/ui`` (see the package docstring for the whole picture)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route, Router

from redraft.errors import RedraftError
from redraft.graph.companions import COMPANION_MAP
from redraft.server.sessions import principal_key
from redraft.server.viewer import data
from redraft.server.viewer.actions import Actions
from redraft.server.viewer.security import (
    AUTH_COOKIE,
    Access,
    csrf_of,
    csrf_ok,
    opened,
    remember,
    remember_opened,
    set_cookie,
)

log = logging.getLogger("redraft.viewer")
HERE = Path(__file__).parent
STATIC = {"viewer.js": "text/javascript; charset=utf-8", "viewer.css": "text/css; charset=utf-8"}
NOT_FOUND_CODES = {"invalid_session", "unknown_companion", "checkpoint_not_found", "not_found"}
MAX_FORM_BYTES = 4 << 20


def _environment():
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"], default_for_string=True, default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["short"] = data.short
    env.filters["epoch"] = data.epoch
    env.filters["num"] = lambda v, digits=3: "-" if v is None else f"{v:.{digits}f}"
    env.filters["q"] = lambda v: quote(str(v), safe="")
    return env


class Viewer:
    """The ``/ui`` ASGI app of one server: its access rules, templates and actions."""

    def __init__(self, mcp, app) -> None:
        self.mcp, self.app = mcp, app
        self.access = Access(verifier=mcp.auth)
        self.actions = Actions(mcp)
        self.templates = _environment()
        self.router = Router(
            routes=[
                Route("/ui", self.sessions, methods=["GET", "HEAD"]),
                Route("/ui/", self.sessions, methods=["GET", "HEAD"]),
                Route("/ui/login", self.login, methods=["GET", "HEAD", "POST"]),
                Route("/ui/logout", self.logout, methods=["POST"]),
                Route("/ui/open", self.open_by_id, methods=["GET"]),
                Route("/ui/static/{name}", self.static, methods=["GET", "HEAD"]),
                Route("/ui/s/{sid}", self.session, methods=["GET", "HEAD"]),
                Route("/ui/s/{sid}/{companion}", self.thread_page, methods=["GET", "HEAD"]),
                Route("/ui/s/{sid}/{companion}/branches", self.branches, methods=["GET", "HEAD"]),
                Route("/ui/s/{sid}/{companion}/live", self.live, methods=["GET"]),
                Route("/ui/s/{sid}/{companion}/do/{action}", self.act, methods=["POST"]),
            ]
        )

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        path = scope["path"]
        public = path.startswith("/ui/static/") or path == "/ui/login"
        if not public and not await self.access.authenticate(request):
            if request.method == "POST" or path.endswith("/live"):
                response: Response = JSONResponse({"error": "unauthorized"}, status_code=401)
            else:
                response = RedirectResponse("/ui/login", status_code=303)
            remember(response, request)
            await response(scope, receive, send)
            return
        await self.router(scope, receive, send)

    # --- helpers ------------------------------------------------------------------------------------------------

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("mode", self.access.mode)
        body = self.templates.get_template(name).render(csrf=csrf_of(request), request=request, **context)
        response = HTMLResponse(body, status_code=status)
        remember(response, request)
        return response

    def problem(self, request: Request, exc: RedraftError) -> HTMLResponse:
        status = 404 if exc.code in NOT_FOUND_CODES else 400
        return self.render(request, "problem.html", status=status, code=exc.code, message=exc.message)

    # --- pages --------------------------------------------------------------------------------------------------

    async def sessions(self, request: Request) -> Response:
        try:
            if self.access.lists_all:
                rows = await self.app.sessions.list(principal_key(), 200)
            else:
                ids = opened(request)
                rows = await self.app.sessions.list(principal_key(), 200, ids) if ids else []
        except RedraftError as exc:
            return self.problem(request, exc)
        return self.render(request, "sessions.html", sessions=rows, lists_all=self.access.lists_all)

    async def open_by_id(self, request: Request) -> Response:
        sid = (request.query_params.get("session_id") or "").strip()[:64]
        response = RedirectResponse(f"/ui/s/{quote(sid, safe='')}", status_code=303)
        remember(response, request)
        return response

    async def session(self, request: Request) -> Response:
        sid = request.path_params["sid"]
        try:
            await self.app.thread(sid, "generic")
            heads = await data.companions_with_threads(self.app.runner, sid, list(COMPANION_MAP))
        except RedraftError as exc:
            return self.problem(request, exc)
        first = next((c for c, h in heads.items() if h), "generic")
        response = RedirectResponse(f"/ui/s/{quote(sid, safe='')}/{first}", status_code=303)
        remember(response, request)
        return response

    async def thread_page(self, request: Request) -> Response:
        sid, companion = request.path_params["sid"], request.path_params["companion"]
        at = request.query_params.get("at") or None
        before = request.query_params.get("before") or None
        runner = self.app.runner
        try:
            thread = await self.app.thread(sid, companion)
            heads = await data.companions_with_threads(runner, sid, list(COMPANION_MAP))
            names = await data.branch_names(runner, thread)
            if not heads.get(companion):
                response = self.render(
                    request,
                    "thread.html",
                    sid=sid,
                    companion=companion,
                    heads=heads,
                    empty=True,
                    names=names,
                    stamp=await self._stamp(thread),
                )
                remember_opened(response, request, sid)
                return response
            current = await data.thread_at(runner, thread, None)
            view = current if at is None else await data.thread_at(runner, thread, at)
            timeline = await data.timeline(runner, thread, before, names)
            runs = await self._runs(thread)
            diff = await self._diff(request, view)
        except RedraftError as exc:
            return self.problem(request, exc)
        threshold = (view.get("run_config") or {}).get("similarity_threshold")
        chart = data.chart(view["points"], threshold, view["stop_reason"])
        response = self.render(
            request,
            "thread.html",
            sid=sid,
            companion=companion,
            heads=heads,
            empty=False,
            at=at,
            before=before,
            view=view,
            current=current,
            timeline=timeline,
            names=names,
            runs=runs,
            diff=diff,
            chart=chart,
            action=self.actions.state(principal_key(), thread),
            stamp=await self._stamp(thread),
            can_resume=bool(current["next"]) and not current["pending_gate"] and not runs,
        )
        remember_opened(response, request, sid)
        return response

    async def _runs(self, thread: str) -> list[dict]:
        store, service = self.app.runs, getattr(self.app, "run_service", None)
        if store is None or service is None:
            return []
        return [await service.view(run["run_id"]) for run in await store.active_for_thread(thread)]

    async def _diff(self, request: Request, view: dict) -> dict | None:
        versions = view["versions"]
        if len(versions) < 2:
            return None
        count = len(versions)

        def pick(name: str, default: int) -> int:
            try:
                value = int(request.query_params.get(name, default))
            except ValueError:
                return default
            return value if 0 <= value < count else default

        a, b = pick("a", count - 2), pick("b", count - 1)
        result = await data.word_diff(versions[a]["text"], versions[b]["text"])
        return {"a": a, "b": b, "count": count, **result}

    async def branches(self, request: Request) -> Response:
        sid, companion = request.path_params["sid"], request.path_params["companion"]
        try:
            thread = await self.app.thread(sid, companion)
            names = await data.branch_names(self.app.runner, thread)
            columns = await data.branches_side_by_side(self.app.runner, thread, names)
        except RedraftError as exc:
            return self.problem(request, exc)
        return self.render(
            request,
            "branches.html",
            sid=sid,
            companion=companion,
            columns=columns,
            total=len(names.tips),
            stamp=await self._stamp(thread),
        )

    async def _stamp(self, thread: str) -> str:
        """What changes when the page would: the thread's head, its runs' progress, the last action's state."""
        head = await data.head(self.app.runner, thread)
        runs = await self._runs(thread)
        parts = [head, *(f"{r['run_id']}:{r['status']}:{r['steps']}:{r.get('progress')}" for r in runs)]
        return "|".join([*parts, self.actions.stamp(principal_key(), thread)])

    async def live(self, request: Request) -> Response:
        sid, companion = request.path_params["sid"], request.path_params["companion"]
        try:
            thread = await self.app.thread(sid, companion)
            body = {"stamp": await self._stamp(thread)}
        except RedraftError as exc:
            return JSONResponse({"error": exc.code}, status_code=404, headers={"cache-control": "no-store"})
        return JSONResponse(body, headers={"cache-control": "no-store"})

    # --- sign-in ------------------------------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        if self.access.mode == "open":  # nothing to sign in to: /ui is as open as /mcp
            response = RedirectResponse("/ui", status_code=303)
            remember(response, request)
            return response
        if request.method != "POST":
            return self.render(request, "login.html", failed=False)
        form = await request.form(max_fields=8, max_part_size=16384)
        if not csrf_ok(request, form.get("csrf")):
            return self.render(request, "problem.html", status=403, code="csrf", message="Reload the page and retry.")
        secret = form.get("token")
        if not isinstance(secret, str) or not await self.access.sign_in(secret):
            return self.render(request, "login.html", status=401, failed=True)
        response = RedirectResponse("/ui", status_code=303)
        set_cookie(response, request, AUTH_COOKIE, secret)
        remember(response, request)
        return response

    async def logout(self, request: Request) -> Response:
        form = await request.form(max_fields=4)
        if not csrf_ok(request, form.get("csrf")):
            return self.render(request, "problem.html", status=403, code="csrf", message="Reload the page and retry.")
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(AUTH_COOKIE, path="/ui")
        remember(response, request)
        return response

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return Response("not found", status_code=404)
        body = (HERE / "static" / name).read_bytes()
        return Response(body, headers={"content-type": STATIC[name], "cache-control": "max-age=300"})

    # --- actions ------------------------------------------------------------------------------------------------

    async def act(self, request: Request) -> Response:
        sid, companion, action = (request.path_params[k] for k in ("sid", "companion", "action"))
        if int(request.headers.get("content-length") or 0) > MAX_FORM_BYTES:
            return JSONResponse({"error": "too_large"}, status_code=413)
        form = await request.form(max_fields=16, max_part_size=MAX_FORM_BYTES)
        if not csrf_ok(request, form.get("csrf")):
            return self.render(request, "problem.html", status=403, code="csrf", message="Reload the page and retry.")
        try:
            thread = await self.app.thread(sid, companion)
        except RedraftError as exc:
            return self.problem(request, exc)
        base = {"session_id": sid, "companion": companion}
        values = {k: v for k, v in form.items() if isinstance(v, str)}
        if action == "fork":
            field = "critique" if "critique" in values else "revision"
            arguments = {**base, "checkpoint_id": values.get("checkpoint_id", ""), field: values.get(field, "")}
            label, tool = f"fork with an edited {field}", "fork"
        elif action == "resume":
            label, tool, arguments = "resume", "resume", base
        elif action == "gate":
            decision = {"action": values.get("action", "")}
            if decision["action"] == "replace":
                decision["text"] = values.get("text", "")
            elif decision["action"] == "edit":
                decision["critique"] = values.get("critique", "")
            label, tool, arguments = f"gate: {decision['action']}", "resume", {**base, "decision": decision}
        elif action == "cancel":
            label, tool, arguments = "cancel run", "cancel_run", {"run_id": values.get("run_id", "")}
        else:
            return self.render(request, "problem.html", status=404, code="not_found", message="No such action.")
        await self.actions.run(principal_key(), thread, label, tool, arguments)
        target = f"/ui/s/{quote(sid, safe='')}/{quote(companion, safe='')}"
        response = RedirectResponse(target, status_code=303)
        remember(response, request)
        return response
