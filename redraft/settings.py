"""The one settings module. Every knob is a ``REDRAFT_*`` environment variable (or a line in ``.env``).

Nested per-companion overrides use ``__``: ``REDRAFT_COMPANIONS__CODE__MAX_LOOPS=8``.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import unquote

from dotenv import dotenv_values
from platformdirs import user_data_dir
from pydantic import AliasChoices, BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from redraft.errors import ConfigError


def default_database_url() -> str:
    return str(Path(user_data_dir("redraft", appauthor=False)) / "redraft.sqlite")


class RoleOverride(BaseModel):
    """One role's model within a companion (drafter, critic or reviser). ``None`` keeps the companion's value (its
    model and temperature, else REDRAFT_MODEL / REDRAFT_TEMPERATURE) and the REDRAFT_BASE_URL endpoint; ``api_key``
    (None: REDRAFT_API_KEY) goes with ``base_url``."""

    model: str | None = None
    base_url: str | None = None
    api_key: SecretStr | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)


class ModelPrice(BaseModel):
    """A model's price in US dollars per million tokens (REDRAFT_PRICES)."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)


class CompanionOverride(BaseModel):
    """Per-companion defaults an operator may override. ``None`` keeps the companion's own default. ``drafter``,
    ``critic`` and ``reviser`` give a role its own model, endpoint and sampling:
    ``REDRAFT_COMPANIONS__CODE__CRITIC__MODEL=gpt-4o``."""

    model: str | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    drafter: RoleOverride | None = None
    critic: RoleOverride | None = None
    reviser: RoleOverride | None = None
    similarity_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    max_loops: int | None = Field(default=None, ge=1, le=1000)
    clear_history: bool | None = None
    mode: Literal["auto", "step"] | None = None
    # Scored critiques (nodes/scoring.py): stop once the critic scores a version at least this (0-10; unset: off),
    # and how the critic answers ("structured": {score, issues, done} JSON; "text": prose). None: the defaults.
    min_score: float | None = Field(default=None, ge=0.0, le=10.0)
    critique_format: Literal["structured", "text"] | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="REDRAFT_",
        env_file=".env",
        env_file_encoding="utf-8",
        env_nested_delimiter="__",
        extra="ignore",
        populate_by_name=True,  # load_settings(base_url=...) still works for the fields with OPENAI_* fallbacks
    )

    # Persistence: postgresql://..., a SQLite file path (or sqlite:///path), or "memory".
    database_url: str = Field(default_factory=default_database_url)
    pool_min_size: int = Field(default=1, ge=0)
    pool_max_size: int = Field(default=10, ge=1)
    # Database timeouts (seconds): opening a connection, any one database call (client- and server-side), and
    # waiting for a free pooled connection. A stalled network ends in a storage_error within these, never a hang.
    db_connect_timeout: float = Field(default=5.0, gt=0, le=300)
    db_statement_timeout: float = Field(default=30.0, gt=0, le=3600)
    db_pool_timeout: float = Field(default=10.0, gt=0, le=300)
    # Server-side prepared statements (psycopg prepares each statement on its first use). Set false behind PgBouncer
    # in transaction mode before 1.21: a pooled server connection does not carry them from one client to the next.
    db_prepared_statements: bool = True
    # A step on PostgreSQL starts from the values this process's last run on the thread committed, when it is at that
    # checkpoint (graph/headcache.py): the log entries (texts, usage and score entries) kept across threads, least
    # recently used first out: ~1 KB per entry with ~2.8 KB revisions (measured), ~20 MB at the default. The same
    # budget bounds the delta snapshots this process decoded, which a walk reuses (graph/seedcache.py). 0 turns both
    # off (every step walks and decodes).
    head_cache_items: int = Field(default=20_000, ge=0)
    # PostgreSQL rows in redraft's compact layout (graph/pglayout.py: a step's writes in one row, slimmer checkpoint
    # rows), and revisions stored as patches against the text before them (graph/textpatch.py, on any saver). Reads
    # take both whatever this says; false writes what releases from before the compact layout can read: set it on
    # the new release while older replicas still run, then turn it on.
    db_compact_layout: bool = True

    # The model: any OpenAI-compatible endpoint. The endpoint and key fall back to the standard OPENAI_BASE_URL and
    # OPENAI_API_KEY when the REDRAFT_* ones are unset (REDRAFT_* wins when both are set).
    model: str = "gpt-4o-mini"
    base_url: str | None = Field(default=None, validation_alias=AliasChoices("redraft_base_url", "openai_base_url"))
    api_key: SecretStr = Field(
        default=SecretStr(""), validation_alias=AliasChoices("redraft_api_key", "openai_api_key")
    )
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    # The model endpoint: REQUEST_TIMEOUT is the most one model request may take, from sending it to its last token,
    # streamed or not (each retry gets its own); CONNECT_TIMEOUT bounds opening the connection (nodes/deadline.py).
    request_timeout: float = Field(default=60.0, gt=0)
    connect_timeout: float = Field(default=10.0, gt=0, le=300)
    max_retries: int = Field(default=2, ge=0, le=10)
    # A reply cut at max_tokens (finish_reason=length): "retry" once with twice the room (then fail if still cut),
    # "fail" at once with a clear model_error, or "accept" the cut text. Either way the step records it.
    on_truncation: Literal["retry", "fail", "accept"] = "retry"
    # The request field that carries sampling.max_tokens. "auto": OpenAI's max_completion_tokens for OpenAI (no base
    # URL, api.openai.com, *.openai.azure.com), the classic max_tokens for every other endpoint (llama.cpp, Ollama,
    # vLLM, LM Studio... read only that one). Exactly one of the two is sent.
    max_tokens_field: Literal["auto", "max_tokens", "max_completion_tokens"] = "auto"
    # Ask streamed replies for their token usage (stream_options.include_usage); an endpoint that ignores it gets
    # its tokens estimated (nodes/usage.py). Off for a server that refuses the field.
    stream_usage: bool = True
    # Prices in USD per million tokens by model name, before the bundled genai-prices table; "*" prices every model
    # neither names (REDRAFT_PRICES='{"*": 0}' for local models). A number is both input and output price. A model
    # priced nowhere has cost null.
    prices: dict[str, ModelPrice | float] = Field(default_factory=dict)
    # Budgets of one run (a refine, a background run, one step call): it stops with stop_reason "budget" once its
    # model calls have used this many tokens (input + output) or this much cost in USD. Unset: no budget.
    max_tokens_per_run: int | None = Field(default=None, ge=1)
    max_cost_per_run: float | None = Field(default=None, gt=0)

    # The critic's answer (nodes/scoring.py): "structured" asks for {score: 0-10, issues: [{where, problem, fix}],
    # done} and parses it tolerantly (a reply that is not such JSON is kept as a prose critique, and noted);
    # "text" is the prose critique ending in NO FURTHER CHANGES. Per companion: REDRAFT_COMPANIONS__CODE__...
    critique_format: Literal["structured", "text"] = "structured"
    # How a structured critique is requested: "auto" sends a JSON-schema response_format and, if the endpoint refuses
    # it (HTTP 400/422), asks again without one (remembered per endpoint and model); "json_schema" / "json_object"
    # always send that response_format; "none" relies on the prompt and the tolerant parser alone.
    critique_response_format: Literal["auto", "json_schema", "json_object", "none"] = "auto"
    # Convergence similarity between consecutive versions: "text" (normalised word-level edit similarity) or
    # "embedding": cosine similarity of embeddings from an OpenAI-compatible /v1/embeddings endpoint
    # (EMBEDDING_BASE_URL, else BASE_URL; EMBEDDING_API_KEY, else API_KEY), falling back to "text" for a step whose
    # embedding call fails, which its scores entry records.
    similarity: Literal["text", "embedding"] = "text"
    embedding_model: str = "text-embedding-3-small"
    embedding_base_url: str | None = None
    embedding_api_key: SecretStr | None = None

    # Defaults for every companion unless the companion or an override says otherwise.
    default_companion: str = "generic"
    companions: dict[str, CompanionOverride] = Field(default_factory=dict)

    # Input limits (characters).
    max_query_chars: int = Field(default=20_000, ge=1)
    max_text_chars: int = Field(default=100_000, ge=1)

    # Sessions.
    session_ttl_seconds: float = Field(default=1800.0, gt=0)
    max_sessions: int = Field(default=10_000, ge=1)
    # MCP transport sessions over HTTP (2025-era clients' `initialize`; not redraft sessions): one idle this long
    # expires, and at the cap the least recently used idle one is evicted for a newcomer. ~40 KB each.
    transport_session_idle_seconds: float = Field(default=600.0, gt=0, le=86_400)
    max_transport_sessions: int = Field(default=1000, ge=1, le=1_000_000)
    sweep_interval_seconds: float = Field(default=60.0, gt=0)
    # Retention: sessions idle, threads untouched and learning stats recorded longer ago than this are deleted by
    # the server's sweep (at most hourly) and by `redraft prune`. 0 keeps everything (prune then needs --older-than).
    retention_days: float = Field(default=30.0, ge=0, le=36_500)
    # A step holds a lease on its thread; if the process dies the lease lapses after this many seconds.
    lease_ttl_seconds: float = Field(default=10.0, gt=0)
    # On SIGTERM/SIGINT the server drains: it takes no new work, lets the steps in flight finish for up to this many
    # seconds, hands its runs and leases back for another replica, then exits 0 (server/drain.py).
    drain_seconds: float = Field(default=30.0, ge=0, le=3600)

    # Background runs (start_refine, MCP tasks): unset = an in-process queue and progress bus (one process);
    # redis://host:port/db = the run queue and progress bus shared by every replica (PostgreSQL stays the truth).
    redis_url: str | None = None

    # HTTP serving and auth.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    auth_tokens: dict[str, str] = Field(default_factory=dict)  # token -> principal (client id)
    jwt_public_key: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    # DNS-rebinding guard on HTTP: "auto" checks Host/Origin on loopback binds and whenever allow-lists are set,
    # "strict" always, "off" never.
    host_origin_protection: Literal["auto", "strict", "off"] = "auto"
    allowed_hosts: list[str] = Field(default_factory=list)
    allowed_origins: list[str] = Field(default_factory=list)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # "text" for humans, or "json": one JSON object per line (time, level, event, code, session, run, node, duration)
    log_format: Literal["text", "json"] = "text"
    # /readyz: each check (database, migrations, Redis) gives up after this many seconds and reports not ready
    health_timeout_seconds: float = Field(default=0.5, gt=0, le=30)

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be empty: use postgresql://..., a SQLite file path, or 'memory'")
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme and scheme not in ("postgresql", "postgres", "sqlite"):
            raise ValueError(
                f"unsupported scheme {scheme!r}: use postgresql://..., sqlite:///path, a file path, or 'memory'"
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if value.split("://", 1)[0].lower() not in ("redis", "rediss", "unix", "redis+sentinel", "memory"):
            raise ValueError("must be a redis://, rediss://, redis+sentinel:// or unix:// URL (or unset)")
        return value

    def masked(self) -> dict:
        """The effective settings with every secret masked, for ``redraft config`` and logs."""
        data = self.model_dump(mode="json")
        data["api_key"] = "****" if self.api_key.get_secret_value() else ""
        if self.embedding_api_key is not None:
            data["embedding_api_key"] = "****" if self.embedding_api_key.get_secret_value() else ""
        data["embedding_base_url"] = mask_url(self.embedding_base_url) if self.embedding_base_url else None
        data["auth_tokens"] = {f"****{i}": principal for i, principal in enumerate(self.auth_tokens.values(), 1)}
        data["database_url"] = mask_url(self.database_url)
        data["base_url"] = mask_url(self.base_url) if self.base_url else None
        data["redis_url"] = mask_url(self.redis_url) if self.redis_url else None
        for name, override in self.companions.items():  # a role's own endpoint and key
            for role in ("drafter", "critic", "reviser"):
                if (given := getattr(override, role)) is not None:
                    shown = data["companions"][name][role]
                    shown["api_key"] = "****" if given.api_key and given.api_key.get_secret_value() else None
                    shown["base_url"] = mask_url(given.base_url) if given.base_url else None
        return data


def mask_url(url: str) -> str:
    """Hide the password part of ``scheme://user:password@host``."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:****@{host}" if ":" in creds else url


def url_password(url: str) -> str:
    """The password of ``scheme://user:password@host...``, read without parsing the rest (which may be malformed),
    or ``""``."""
    if "://" not in url or "@" not in url:
        return ""
    creds = url.split("://", 1)[1].rsplit("@", 1)[0]
    return creds.split(":", 1)[1] if ":" in creds else ""


# Settings whose values are secret, and the nested form of bearer tokens (``REDRAFT_AUTH_TOKENS__<token>=who``).
SECRET_FIELDS = ("api_key", "embedding_api_key", "auth_tokens", "database_url")
_CREDENTIALS_IN_URL = re.compile(r"(://[^\s:/@]*:)[^\s@]+@")


def configured_secrets(**overrides) -> list[str]:
    """The secret values as configured -- API key, bearer tokens, database password -- read from ``overrides``,
    the environment and ``.env`` without validating anything, so that an error about invalid settings (or about a
    database it cannot reach) can mask them. Longest first."""
    raw: dict[str, str] = {}
    env_file = Settings.model_config.get("env_file")
    sources = [dotenv_values(env_file) if env_file and Path(env_file).is_file() else {}, os.environ]
    for source in sources:
        raw.update({k.lower(): v for k, v in source.items() if v is not None and k.lower().startswith("redraft_")})
        fallback = source.get("OPENAI_API_KEY")  # the model key's standard fallback: a secret too
        if fallback:
            raw[f"redraft_api_key__openai_{len(raw)}"] = fallback
    raw.update({f"redraft_{k}": v for k, v in overrides.items() if k in SECRET_FIELDS and isinstance(v, str)})
    values: list[str] = []
    for name, value in raw.items():
        field = name.removeprefix("redraft_")
        if field.startswith("auth_tokens__"):
            values.append(name.split("__", 1)[1])
            values.append(value)
        elif field == "auth_tokens":
            values.append(value)
            try:
                values.extend(str(token) for token in json.loads(value))
            except (ValueError, TypeError):
                values.extend(re.findall(r'"([^"]+)"', value))  # malformed JSON: every quoted string
        elif field in ("api_key", "embedding_api_key") or field.startswith("api_key__openai_"):
            values.append(value)
        elif field.startswith("companions") and field.endswith("__api_key"):  # a role's own key
            values.append(value)
        elif field.startswith("companions"):  # REDRAFT_COMPANIONS='{"code": {"critic": {"api_key": "..."}}}'
            values.extend(re.findall(r'"api_key"\s*:\s*"([^"]+)"', value))
        elif field == "database_url":
            password = url_password(value)
            values += [password, unquote(password)]
    return sorted({v for v in values if len(v) >= 3}, key=len, reverse=True)


def mask_secrets(text: str, secrets: list[str]) -> str:
    """``text`` with every one of ``secrets`` and every ``scheme://user:password@`` password replaced by ``****``."""
    for secret in secrets:
        text = text.replace(secret, "****")
    return _CREDENTIALS_IN_URL.sub(r"\1****@", text)


def load_settings(**overrides) -> Settings:
    """Build settings, turning pydantic's validation error into one clear ``ConfigError`` that never shows a
    password or token."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"REDRAFT_{'__'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
    except SettingsError as exc:  # a value that is not valid JSON for a list or dict setting
        field = re.search(r'field "([^"]+)"', str(exc))
        reason = f"not valid JSON ({exc.__cause__})" if isinstance(exc.__cause__, ValueError) else "unreadable"
        problems = f"REDRAFT_{field.group(1).upper() if field else 'SETTINGS'}: {reason}"
    raise ConfigError(mask_secrets(f"Invalid settings: {problems}", configured_secrets(**overrides)))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
