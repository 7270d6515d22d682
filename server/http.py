"""Serving the MCP app over streamable HTTP: bounded transport sessions, and no credentials in URLs.

* **Transport sessions are bounded.** A 2025-era client opens a transport session with ``initialize`` and may then
  vanish. Each such session holds ~40 KB and, left alone, the SDK refuses every newcomer once ``max_sessions`` are
  open. Here a session idle for ``REDRAFT_TRANSPORT_SESSION_IDLE_SECONDS`` expires, and at
  ``REDRAFT_MAX_TRANSPORT_SESSIONS`` the least recently used *idle* one (no request in flight, no open stream) is
  evicted to admit the newcomer. An evicted client gets 404 on its next request and initializes again, as the
  protocol says. Only when every open session is busy is a newcomer refused (503). These are transport sessions
  only: redraft's own sessions live in the database and are untouched.
* **No token in a query string.** A request carrying ``access_token``, ``token`` or ``api_key`` in its query string
  (or any configured secret anywhere in it) gets 401 before routing, and its query string is masked in place, so
  uvicorn's access log (which prints that very ``scope``) never sees the secret.
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import json
import logging
import math
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes, urlencode

from starlette.types import ASGIApp, Receive, Scope, Send

from redraft.server.redaction import MASK, secrets_of
from redraft.settings import Settings

log = logging.getLogger("redraft.server")

SECRET_PARAMS = frozenset({"access_token", "token", "api_key"})


def mask_query(query: bytes, secrets: list[str] = ()) -> bytes | None:
    """The query string with its credentials masked, or None when it carries none. A configured secret anywhere in
    it masks the whole query string."""
    text = query.decode("latin-1")
    decoded = unquote_to_bytes(text).decode("utf-8", "replace")
    if any(secret in text or secret in decoded for secret in secrets):
        return MASK.encode()
    pairs = parse_qsl(text, keep_blank_values=True)
    if not any(_names_secret(key) for key, _ in pairs):
        return None
    return urlencode([(key, MASK if _names_secret(key) else value) for key, value in pairs], safe="*").encode()


def _names_secret(key: str) -> bool:
    return key.strip().lower() in SECRET_PARAMS


class QueryTokenGuard:
    """Outermost ASGI layer: 401 for credentials in a URL, with the URL masked before anything logs it."""

    def __init__(self, app: ASGIApp, secrets: list[str] = ()) -> None:
        self.app = app
        self.secrets = list(secrets)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope.get("query_string"):
            masked = mask_query(scope["query_string"], self.secrets)
            if masked is not None:
                scope["query_string"] = masked  # the server's access log reads this same dict
                log.warning("refused a request with a credential in its query string (401)")
                await _refuse(scope, send)
                return
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, send: Send) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps(
        {
            "error": "invalid_request",
            "error_description": "Credentials in the URL are refused: send the token in the Authorization header.",
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b'Bearer error="invalid_request"'),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# --- transport sessions -----------------------------------------------------------------------------------------


def _session_manager_holder(app) -> Any:
    """The object FastMCP's lifespan hands the streamable-HTTP session manager to (its endpoint on the MCP route)."""
    for route in app.router.routes:
        endpoint = getattr(route, "endpoint", None)
        for candidate in (endpoint, getattr(endpoint, "app", None)):
            if candidate is not None and hasattr(candidate, "session_manager"):
                return candidate
    raise RuntimeError("no streamable-HTTP endpoint found in the app")


def evict_idle(manager) -> str | None:
    """Evict the least recently used idle transport session; its id, or None when every session is busy.

    A transport's ``idle_scope.deadline`` is +inf while a request (or stream) is in flight and "last activity + idle
    timeout" otherwise, so the smallest finite deadline is the least recently used idle session."""
    victim, oldest = None, math.inf
    for session_id, transport in manager._server_instances.items():
        scope = transport.idle_scope
        if scope is not None and not scope.cancel_called and scope.deadline < oldest:
            victim, oldest = session_id, scope.deadline
    if victim is None:
        return None
    transport = manager._server_instances.pop(victim)
    manager._session_owners.pop(victim, None)
    transport.idle_scope.cancel()  # ends its server task, which terminates the transport
    return victim


def bound_sessions(manager, idle_seconds: float, max_sessions: int) -> None:
    """Give a running session manager an idle timeout and a cap that evicts instead of refusing newcomers."""
    manager.session_idle_timeout = idle_seconds
    manager.max_sessions = max_sessions
    admit = manager._admit_session

    def admit_or_evict(requestor):
        # called under the manager's creation lock, with no await: the count cannot move underneath
        if len(manager._server_instances) >= max_sessions and evict_idle(manager) is not None:
            log.info("evicted the least recently used idle transport session (%d open)", max_sessions)
        return admit(requestor)

    manager._admit_session = admit_or_evict


def bound_transport_sessions(app, idle_seconds: float, max_sessions: int) -> None:
    """Apply ``bound_sessions`` to the session manager each time the app's lifespan creates one."""
    holder = _session_manager_holder(app)
    original = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(starlette_app) -> AsyncIterator[Any]:
        async with original(starlette_app) as state:
            bound_sessions(holder.session_manager, idle_seconds, max_sessions)
            yield state

    app.router.lifespan_context = lifespan


def build_http_app(mcp, settings: Settings, host: str) -> ASGIApp:
    protection = {"auto": "auto", "strict": True, "off": False}[settings.host_origin_protection]
    allowed_hosts = settings.allowed_hosts or None
    if allowed_hosts is None and protection == "auto" and _is_loopback(host):
        allowed_hosts = [host]  # as FastMCP's run_http_async does for a loopback bind
    app = mcp.http_app(
        path="/mcp",
        transport="http",
        host_origin_protection=protection,
        allowed_hosts=allowed_hosts,
        allowed_origins=settings.allowed_origins or None,
        session_idle_timeout=settings.transport_session_idle_seconds,
    )
    bound_transport_sessions(app, settings.transport_session_idle_seconds, settings.max_transport_sessions)
    return QueryTokenGuard(app, secrets_of(settings))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def serve_http(mcp, settings: Settings, host: str, port: int) -> None:
    """``FastMCP.run_http_async``, with the app built (and wrapped) here; SIGTERM/SIGINT drain it first."""
    import uvicorn
    from fastmcp.utilities.logging import temporary_log_level
    from uvicorn.config import LOGGING_CONFIG

    from redraft.server.drain import Drain, DrainingServer

    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["handlers"]["access"]["stream"] = "ext://sys.stderr"  # every log line on stderr, as the rest
    if settings.log_format == "json":
        log_config = None  # uvicorn's lines go to the root logger's JSON handler (redraft/observability/logs.py)
    config = uvicorn.Config(
        build_http_app(mcp, settings, host),
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        log_config=log_config,
        lifespan="on",
        timeout_graceful_shutdown=2,  # after the drain (server/drain.py): only reads like wait_run's are left to cut
        ws="websockets-sansio",
    )
    with temporary_log_level(settings.log_level):
        await DrainingServer(config, Drain(mcp, settings)).serve()
