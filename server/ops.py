"""Operator endpoints on the HTTP app, beside ``/mcp``:

* ``GET /healthz`` -- the process is alive and serving HTTP (no I/O). No auth.
* ``GET /readyz`` -- 200 when the database answers, its schema is migrated, Redis answers (when configured) and the
  process is not draining; 503 otherwise. JSON, each check timed (redraft/observability/health.py). No auth.
* ``GET /metrics`` -- Prometheus text exposition, behind the same auth as ``/mcp`` (a bearer token when
  ``REDRAFT_AUTH_TOKENS`` or ``REDRAFT_JWT_PUBLIC_KEY`` is set; open when ``/mcp`` is open).

Neither health endpoint says anything secret: check names, booleans, durations, migration versions and exception type
names only.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator
from typing import Any

from fastmcp import FastMCP
from fastmcp.server.providers.base import Provider
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from redraft import __version__
from redraft.observability import metrics
from redraft.observability.health import Readiness, build_readiness

NO_STORE = {"cache-control": "no-store"}


class _Probes:
    """The readiness checks of the backend the current lifespan opened; closed with it."""

    def __init__(self, app) -> None:
        self.app = app
        self.readiness: Readiness | None = None
        self.for_runner: Any = None
        self.started = time.time()

    def current(self) -> Readiness | None:
        runner = self.app.runner
        if runner is None:
            return None
        if self.readiness is None or self.for_runner is not runner:
            self.readiness = build_readiness(
                runner.persistence, self.app.settings, lambda: bool(getattr(self.app, "draining", False))
            )
            self.for_runner = runner
        return self.readiness

    async def close(self) -> None:
        readiness, self.readiness, self.for_runner = self.readiness, None, None
        if readiness is not None:
            await readiness.close()


class _ProbesLifespan(Provider):
    """A provider with no components: closes the probes' own connections when the server stops."""

    def __init__(self, probes: _Probes) -> None:
        super().__init__()
        self.probes = probes

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            await self.probes.close()


class _MetricsApp:
    """The exposition as a plain ASGI app, so the auth guard of ``/mcp`` can wrap it."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        if scope.get("method") not in ("GET", "HEAD"):
            await Response(status_code=405, headers={"allow": "GET, HEAD"})(scope, receive, send)
            return
        runner = self.app.runner
        if runner is not None:
            await metrics.refresh_from_database(
                runner.persistence.db, self.app.settings.session_ttl_seconds, self.app.settings.health_timeout_seconds
            )
        body, content_type = metrics.exposition()
        await Response(body, headers={"content-type": content_type, **NO_STORE})(scope, receive, send)


def register_ops(mcp: FastMCP, app) -> None:
    """Add ``/healthz``, ``/readyz`` and ``/metrics`` to the HTTP app (custom routes: not MCP tools)."""
    metrics.enable()  # the server's hooks count from here on (redraft/observability/metrics.py)
    probes = _Probes(app)
    mcp.add_provider(_ProbesLifespan(probes))

    @mcp.custom_route("/healthz", methods=["GET", "HEAD"], include_in_schema=False)
    async def healthz(request: Request) -> Response:
        body = {"status": "ok", "version": __version__, "uptime_s": round(time.time() - probes.started, 3)}
        return JSONResponse(body, headers=NO_STORE)

    @mcp.custom_route("/readyz", methods=["GET", "HEAD"], include_in_schema=False)
    async def readyz(request: Request) -> Response:
        readiness = probes.current()
        if readiness is None:
            return JSONResponse({"status": "starting", "checks": {}}, status_code=503, headers=NO_STORE)
        ready, body = await readiness.check()
        return JSONResponse(body, status_code=200 if ready else 503, headers=NO_STORE)

    endpoint: Any = _MetricsApp(app)
    if mcp.auth is not None:
        from fastmcp.server.auth.middleware import RequireAuthMiddleware

        endpoint = RequireAuthMiddleware(endpoint, mcp.auth.required_scopes)
    # an ASGI app as the endpoint: Starlette passes the request through as is (the auth guard, then the exposition)
    mcp.custom_route("/metrics", methods=["GET", "HEAD"], include_in_schema=False)(endpoint)
