"""Who may use the viewer, and how a browser proves it.

Three modes, decided by how the server was started:

* **auth** -- the server has auth (``REDRAFT_AUTH_TOKENS`` or ``REDRAFT_JWT_PUBLIC_KEY``), as ``/mcp`` does. A request
  carries the same bearer token, either in an ``Authorization`` header (scripts) or, for a browser, in an HttpOnly
  cookie set once by the sign-in form (``POST /ui/login``; a token is never accepted in a URL). The token is verified
  on every request by the server's own verifier, so a revoked token or an expired JWT stops working at once, and each
  principal sees only its own sessions.
* **key** -- ``redraft ui`` without auth: the command mints a random launch key and prints a link carrying it in the
  URL *fragment* (``/ui/login#key=...``), which browsers never send to a server; the sign-in page posts it once and
  gets the same HttpOnly cookie. The viewer then acts as the local CLI user (the ``anon`` principal) and lists all of
  its sessions, as ``redraft sessions`` does.
* **open** -- ``redraft serve --transport http`` without auth: ``/ui`` is as open as ``/mcp``. A session id is a
  bearer capability there, so the list shows only the sessions this browser has opened (by id).

Every state-changing request (a POST) needs a CSRF token: a random value in an HttpOnly, SameSite=Strict cookie that
each form repeats in a hidden field (double submit); a POST whose ``Origin`` is another site is refused as well.
Every page carries a strict Content-Security-Policy (scripts and styles from ``/ui/static`` only).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field

from starlette.requests import Request

AUTH_COOKIE = "redraft_ui_auth"
CSRF_COOKIE = "redraft_ui_csrf"
OPENED_COOKIE = "redraft_ui_opened"  # open mode: the session ids this browser opened
MAX_OPENED = 20
COOKIE_PATH = "/ui"

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",  # "no-referrer" makes browsers send `Origin: null` on form posts,
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}


@dataclass
class Access:
    """How the viewer lets people in: ``mode`` is auth, key or open (see the module docstring)."""

    verifier: object | None = None  # the server's TokenVerifier (auth mode)
    launch_key: str | None = None  # redraft ui (key mode)
    _csrf_bytes: int = field(default=32, repr=False)

    @property
    def mode(self) -> str:
        if self.verifier is not None:
            return "auth"
        return "key" if self.launch_key else "open"

    @property
    def lists_all(self) -> bool:
        """Whether the session list shows every session of the principal (not only those opened by id)."""
        return self.mode in ("auth", "key")

    async def authenticate(self, request: Request) -> bool:
        """Whether the request may use the viewer. In auth mode it also becomes the token's principal (the request's
        ``user``, which ``principal_key()`` and the MCP tools read)."""
        from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser

        if self.mode == "open":
            return True
        cookie = request.cookies.get(AUTH_COOKIE, "")
        if self.mode == "key":
            return bool(cookie) and hmac.compare_digest(cookie.encode(), self.launch_key.encode())
        if isinstance(request.scope.get("user"), AuthenticatedUser):  # a valid Authorization header
            return True
        if not cookie:
            return False
        token = await self.verifier.verify_token(cookie)
        if token is None:
            return False
        request.scope["user"] = AuthenticatedUser(token)  # the same dict FastMCP's request context holds
        return True

    async def sign_in(self, secret: str) -> bool:
        """Whether ``secret`` (the login form's field) lets its bearer in."""
        if not secret or len(secret) > 8192:
            return False
        if self.mode == "key":
            return hmac.compare_digest(secret.encode(), self.launch_key.encode())
        if self.mode == "auth":
            return await self.verifier.verify_token(secret) is not None
        return True

    def new_csrf(self) -> str:
        return secrets.token_urlsafe(self._csrf_bytes)


def csrf_of(request: Request) -> str:
    """The CSRF token for this browser (a fresh one when it has none yet; ``remember`` sets the cookie)."""
    token = request.cookies.get(CSRF_COOKIE)
    if not token:
        token = request.state.__dict__.setdefault("new_csrf", secrets.token_urlsafe(32))
    return token


def csrf_ok(request: Request, form_value: object) -> bool:
    """Double submit: the form's hidden field equals the cookie; and the Origin, when sent, is this site."""
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if not cookie or not isinstance(form_value, str) or not hmac.compare_digest(cookie.encode(), form_value.encode()):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")


def secure(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"


def set_cookie(response, request: Request, name: str, value: str, max_age: int | None = None) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=secure(request),
    )


def remember(response, request: Request) -> None:
    """Set the CSRF cookie when this request minted the token; add the security headers."""
    new = request.state.__dict__.get("new_csrf")
    if new and not request.cookies.get(CSRF_COOKIE):
        set_cookie(response, request, CSRF_COOKIE, new)
    for key, value in SECURITY_HEADERS.items():
        response.headers.setdefault(key, value)


def opened(request: Request) -> list[str]:
    raw = request.cookies.get(OPENED_COOKIE, "")
    return [sid for sid in raw.split(".") if sid][:MAX_OPENED]


def remember_opened(response, request: Request, session_id: str) -> None:
    ids = [session_id, *[sid for sid in opened(request) if sid != session_id]][:MAX_OPENED]
    set_cookie(response, request, OPENED_COOKIE, ".".join(ids), max_age=30 * 86400)
