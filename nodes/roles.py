"""Per-role models: a companion may give its drafter, critic and reviser each their own model, endpoint and sampling
(``REDRAFT_COMPANIONS__CODE__CRITIC__MODEL=gpt-4o``). Defaults stay one model for all.

The run_log slot's ``sampling`` stays the query's one record of what served it: the companion's model and sampling at
the top, and under ``roles`` the fully resolved sampling of each role that differs from it. A role with its own
endpoint carries ``endpoint: "<companion>.<role>"``, a reference to the settings that name the URL and key: the
endpoint and key themselves are never stored in state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redraft.errors import ConfigError
from redraft.settings import Settings, mask_url

ROLES = ("drafter", "critic", "reviser")
ROLE_OF = {"draft": "drafter", "critique": "critic", "revision": "reviser"}  # a model call's purpose -> its role
ROLE_SAMPLING_KEYS = ("model", "temperature", "top_p", "max_tokens")


@dataclass(frozen=True)
class Endpoint:
    base_url: str | None
    api_key: str = ""

    def __repr__(self) -> str:  # never the key
        return f"Endpoint({mask_url(self.base_url) if self.base_url else None!r})"


def role_samplings(companion, base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each role's sampling that differs from ``base``: the role's own values over ``base``, then the per-call
    ``overrides`` (which apply to every role)."""
    roles: dict[str, dict[str, Any]] = {}
    for role in ROLES:
        given = companion.role(role)
        if given is None:
            continue
        sampling = dict(base)
        for key in ROLE_SAMPLING_KEYS:
            value = getattr(given, key)
            if value is not None:
                sampling[key] = value
        sampling.update(overrides)
        if given.base_url:
            sampling["endpoint"] = f"{companion.name}.{role}"
        if sampling != base:
            roles[role] = sampling
    return roles


def for_role(sampling: dict[str, Any], purpose: str) -> dict[str, Any]:
    """The sampling that serves a call for ``purpose`` (draft, critique, revision)."""
    role = (sampling.get("roles") or {}).get(ROLE_OF.get(purpose, ""))
    if role is not None:
        return role
    return {k: v for k, v in sampling.items() if k != "roles"}


def endpoint_of(settings: Settings, sampling: dict[str, Any]) -> Endpoint:
    """Where a (role's) sampling is sent: the role's own base URL and key, else REDRAFT_BASE_URL / REDRAFT_API_KEY."""
    key = settings.api_key.get_secret_value()
    ref = sampling.get("endpoint")
    if not ref:
        return Endpoint(settings.base_url, key)
    companion, _, role = str(ref).partition(".")
    override = settings.companions.get(companion)
    given = getattr(override, role, None) if override is not None and role in ROLES else None
    if given is None or not given.base_url:
        env = f"REDRAFT_COMPANIONS__{companion.upper()}__{role.upper()}__BASE_URL"
        raise ConfigError(
            f"This query's {role or 'role'} was opened with its own endpoint, but {env} is no longer set. Set it "
            "again, or start the query again to use today's settings."
        )
    return Endpoint(given.base_url, given.api_key.get_secret_value() if given.api_key else key)


def model_label(sampling: dict[str, Any] | None) -> str | None:
    """One name for the models that served a query: the model, or ``drafter=a critic=b reviser=c`` when the roles
    use different ones (stats are split by it)."""
    if not sampling:
        return None
    models = [for_role(sampling, purpose).get("model") for purpose in ROLE_OF]
    if len(set(models)) <= 1:
        return models[0] if models else sampling.get("model")
    return " ".join(f"{role}={model}" for role, model in zip(ROLES, models, strict=True))
