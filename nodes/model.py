"""Model factory over ``ChatOpenAI``: any OpenAI-compatible endpoint (OpenAI, Ollama, vLLM, a local stub).

``sampling`` (stored in each run_log slot) carries the per-query choices: model, temperature and optionally top_p,
max_tokens and seed. Endpoint, key, timeout and retries come from settings and are never stored in state.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_openai import ChatOpenAI

from redraft.errors import ConfigError, ModelError
from redraft.settings import Settings

SAMPLING_KEYS = ("model", "temperature", "top_p", "max_tokens", "seed")


def effective_sampling(settings: Settings, companion, overrides: dict | None) -> dict[str, Any]:
    """Companion defaults, then settings, then per-call overrides. Only known, non-secret keys survive."""
    sampling: dict[str, Any] = {
        "model": companion.model or settings.model,
        "temperature": companion.temperature if companion.temperature is not None else settings.temperature,
    }
    for key, value in (overrides or {}).items():
        if key not in SAMPLING_KEYS:
            raise ConfigError(f"Unknown sampling option {key!r}; allowed: {', '.join(SAMPLING_KEYS)}.")
        if value is not None:
            sampling[key] = value
    return sampling


class ModelProvider:
    """Builds (and reuses, per sampling choice) chat models. Holds clients, never state."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cache: dict[str, BaseChatModel] = {}

    def get(self, sampling: dict[str, Any]) -> BaseChatModel:
        key = json.dumps(sampling, sort_keys=True)
        model = self._cache.get(key)
        if model is None:
            model = self._cache[key] = self.build(sampling)
        return model

    def build(self, sampling: dict[str, Any]) -> BaseChatModel:
        s = self.settings
        api_key = s.api_key.get_secret_value()
        if not api_key:
            if not s.base_url:
                raise ConfigError("REDRAFT_API_KEY is required when REDRAFT_BASE_URL is not set (OpenAI).")
            api_key = "not-needed"  # Ollama / vLLM accept any key
        kwargs: dict[str, Any] = {
            "model": sampling["model"],
            "temperature": sampling.get("temperature"),
            "base_url": s.base_url,
            "api_key": api_key,
            "timeout": s.request_timeout,
            "max_retries": s.max_retries,
        }
        for key in ("top_p", "max_tokens", "seed"):
            if sampling.get(key) is not None:
                kwargs[key] = sampling[key]
        return ChatOpenAI(**kwargs)


async def complete(model: BaseChatModel, messages: list[BaseMessage], purpose: str) -> str:
    """One chat completion as text. Every failure becomes a ``ModelError`` without secrets in it."""
    try:
        reply = await model.ainvoke(messages)
    except openai.RateLimitError:
        raise ModelError(f"The model endpoint kept rate-limiting the {purpose} request (429) after retries.") from None
    except openai.APITimeoutError:
        raise ModelError(f"The model endpoint timed out on the {purpose} request after retries.") from None
    except openai.APIConnectionError:
        raise ModelError(f"Cannot reach the model endpoint for the {purpose} request.") from None
    except openai.AuthenticationError:
        raise ModelError("The model endpoint rejected the API key (401).", retryable=False) from None
    except openai.APIStatusError as exc:
        raise ModelError(
            f"The model endpoint answered HTTP {exc.status_code} to the {purpose} request.",
            retryable=exc.status_code >= 500 or exc.status_code == 429,
        ) from None
    except (openai.APIResponseValidationError, json.JSONDecodeError, httpx.DecodingError, KeyError, TypeError):
        raise ModelError(f"The model endpoint returned a malformed response to the {purpose} request.") from None
    content = reply.content
    if isinstance(content, list):  # content blocks
        content = "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    text = (content or "").strip()
    if not text:
        raise ModelError(f"The model returned empty content for the {purpose} request.")
    return text
