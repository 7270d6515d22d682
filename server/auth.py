"""Optional bearer-token auth for HTTP: static tokens (``REDRAFT_AUTH_TOKENS='{"token": "principal"}'``) or JWTs
verified with a public key (``REDRAFT_JWT_PUBLIC_KEY`` plus optional issuer/audience). Under auth each principal
sees only its own sessions."""

from __future__ import annotations

from fastmcp.server.auth import TokenVerifier
from fastmcp.server.auth.providers.jwt import JWTVerifier, StaticTokenVerifier

from redraft.settings import Settings


def build_auth(settings: Settings) -> TokenVerifier | None:
    if settings.jwt_public_key:
        return JWTVerifier(
            public_key=settings.jwt_public_key, issuer=settings.jwt_issuer, audience=settings.jwt_audience
        )
    if settings.auth_tokens:
        return StaticTokenVerifier(
            tokens={token: {"client_id": principal, "scopes": []} for token, principal in settings.auth_tokens.items()}
        )
    return None
