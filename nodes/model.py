"""Model factory over ``ChatOpenAI``: any OpenAI-compatible endpoint (OpenAI, Ollama, vLLM, llama.cpp, a local stub).

``sampling`` (stored in each run_log slot) carries the per-query choices: model, temperature and optionally top_p,
max_tokens and seed. Endpoint, key, timeout and retries come from settings and are never stored in state.

Clients are cached per model name and endpoint (a role may have its own: nodes/roles.py; timeout and retries are this
provider's settings), in a small LRU; temperature, top_p, max_tokens and seed are bound per call, so distinct seeds
never add a client.

Model-side faults become clear errors: a prompt larger than the server's context window is ``context_overflow`` with
the server's own (sanitised) reason and a way forward; a reply cut at ``max_tokens`` (``finish_reason=length``) is
retried once with twice the room, failed, or accepted, as ``REDRAFT_ON_TRUNCATION`` says, and recorded.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import httpx2
import openai
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable
from langchain_openai import ChatOpenAI

from redraft.errors import ConfigError, ContextOverflowError, DrainingError, ModelError, TruncatedReplyError
from redraft.nodes import usage
from redraft.nodes.deadline import model_http_client, model_timeout
from redraft.nodes.pricing import cost_of
from redraft.nodes.roles import Endpoint, endpoint_of, for_role, role_samplings
from redraft.observability.modelcalls import ModelCall
from redraft.settings import Settings

SAMPLING_KEYS = ("model", "temperature", "top_p", "max_tokens", "seed")
PER_CALL_KEYS = ("temperature", "top_p", "max_tokens", "seed")  # bound per call: they never make a new client
CLIENT_CACHE_SIZE = 8
REASON_CHARS = 300  # at most this much of a model server's error text reaches a client

# How OpenAI-compatible servers say "the prompt does not fit": OpenAI, llama.cpp (old and new wording), vLLM,
# llama-cpp-python, LM Studio, Anthropic-style gateways. Matched case-insensitively in the error's message/type/code.
OVERFLOW_MARKERS = (
    "context_length_exceeded",
    "exceed_context_size_error",
    "exceeds the available context size",
    "exceeds the context window",
    "maximum context length",
    "model_context_window_exceeded",
    "greater than the context length",
    "reduce the length of the messages",
    "prompt is too long",
    "input is too long",
)
_SECRETS = (
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}"), "sk-****"),
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=\-]+"), "Bearer ****"),
    (
        re.compile(r"(?i)\b(api[_ -]?key|access[_-]?token|token|password|secret)([\"'\s]*[:=][\"'\s]*)[^\s\"',;}&]+"),
        r"\1\2****",
    ),
    (re.compile(r"://[^/\s:@]+:[^/\s@]+@"), "://****@"),
)


def effective_sampling(settings: Settings, companion, overrides: dict | None) -> dict[str, Any]:
    """Companion defaults, then settings, then per-call overrides. Only known, non-secret keys survive. Roles with
    their own model, endpoint or sampling (nodes/roles.py) are listed under ``roles``; per-call overrides apply to
    every role."""
    sampling: dict[str, Any] = {
        "model": companion.model or settings.model,
        "temperature": companion.temperature if companion.temperature is not None else settings.temperature,
    }
    given: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if key not in SAMPLING_KEYS:
            raise ConfigError(f"Unknown sampling option {key!r}; allowed: {', '.join(SAMPLING_KEYS)}.")
        if value is not None:
            given[key] = value
    sampling.update(given)
    roles = role_samplings(companion, sampling, given)
    return {**sampling, "roles": roles} if roles else sampling


def max_tokens_field(setting: str, base_url: str | None) -> str:
    """The request field that carries ``max_tokens`` for this endpoint (``REDRAFT_MAX_TOKENS_FIELD``): "auto" is
    OpenAI's ``max_completion_tokens`` for OpenAI itself and the classic ``max_tokens`` everywhere else."""
    if setting != "auto":
        return setting
    if not base_url:
        return "max_completion_tokens"
    try:
        host = (urlsplit(base_url.strip()).hostname or "").lower()
    except ValueError:
        host = ""
    openai_hosts = host == "api.openai.com" or host.endswith(".openai.azure.com")
    return "max_completion_tokens" if openai_hosts else "max_tokens"


class ChatClient(ChatOpenAI):
    """``ChatOpenAI`` sending the output limit in the one field its endpoint reads. ChatOpenAI always renames
    ``max_tokens`` to OpenAI's newer ``max_completion_tokens``, which llama.cpp, llama-cpp-python and other servers
    that predate it silently ignore (and OpenAI refuses both at once)."""

    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_completion_tokens"

    def _get_request_payload(self, input_: Any, *, stop: list[str] | None = None, **kwargs: Any) -> dict:
        payload = super()._get_request_payload(input_, stop=stop, **kwargs)
        if self.max_tokens_field == "max_tokens" and "max_completion_tokens" in payload:
            payload["max_tokens"] = payload.pop("max_completion_tokens")
        return payload


@dataclass(frozen=True)
class Reply:
    """A model's answer. ``truncation`` says what was done about a reply cut at ``max_tokens``, if one was."""

    text: str
    truncation: dict[str, Any] | None = None


class ModelProvider:
    """Builds and reuses chat clients (at most ``CLIENT_CACHE_SIZE``, least recently used evicted). Holds clients,
    never state."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._clients: OrderedDict[tuple, BaseChatModel] = OrderedDict()
        # Set while the server drains (server/drain.py): a step not yet started makes no model call and fails with
        # DrainingError, committing nothing, so every run stops at its next step boundary.
        self.draining = False

    def client(self, model: str, endpoint: Endpoint | None = None) -> BaseChatModel:
        s = self.settings
        endpoint = endpoint or endpoint_of(s, {})
        key = (model, endpoint, s.request_timeout, s.connect_timeout, s.max_retries)
        found = self._clients.get(key)
        if found is not None:
            self._clients.move_to_end(key)
            return found
        built = self.build({"model": model}, endpoint)  # may raise ConfigError: then nothing is cached
        self._clients[key] = built
        while len(self._clients) > CLIENT_CACHE_SIZE:
            self._clients.popitem(last=False)
        return built

    def get(self, sampling: dict[str, Any], bind: dict[str, Any] | None = None) -> Runnable:
        """The client for ``sampling['model']`` (at its role's endpoint) with the per-call sampling bound to it, and
        any extra request fields in ``bind`` (the critic's ``response_format``: nodes/scoring.py)."""
        per_call: dict[str, Any] = {k: sampling[k] for k in PER_CALL_KEYS if sampling.get(k) is not None}
        per_call.update(bind or {})
        client = self.client(sampling["model"], endpoint_of(self.settings, sampling))
        return client.bind(**per_call) if per_call else client

    def build(self, sampling: dict[str, Any], endpoint: Endpoint | None = None) -> BaseChatModel:
        s = self.settings
        endpoint = endpoint or endpoint_of(s, {})
        api_key = endpoint.api_key
        if not api_key:
            if not endpoint.base_url:
                raise ConfigError(
                    "REDRAFT_API_KEY is required (or the standard OPENAI_API_KEY) when neither REDRAFT_BASE_URL nor "
                    "OPENAI_BASE_URL is set (OpenAI)."
                )
            api_key = "not-needed"  # Ollama / vLLM accept any key
        return ChatClient(
            max_tokens_field=max_tokens_field(s.max_tokens_field, endpoint.base_url),
            model=sampling["model"],
            base_url=endpoint.base_url,
            api_key=api_key,
            # one meaning, streamed or not: the whole request (to the last token) within REQUEST_TIMEOUT, opening
            # the connection within CONNECT_TIMEOUT (nodes/deadline.py); LangChain's own per-chunk timer is off
            timeout=model_timeout(s.request_timeout, s.connect_timeout),
            http_async_client=model_http_client(s.request_timeout, s.connect_timeout),
            stream_chunk_timeout=0,
            max_retries=s.max_retries,
            # streamed replies end with their token usage where the endpoint supports it (else it is estimated)
            stream_usage=s.stream_usage,
        )

    async def complete(
        self,
        sampling: dict[str, Any],
        messages: list[BaseMessage],
        purpose: str,
        overflow_hint: str = "",
        bind: dict[str, Any] | None = None,
    ) -> Reply:
        """One completion under the truncation policy. ``overflow_hint``: what the caller can do if the prompt does
        not fit the model's context window (resuming would only repeat the refusal)."""
        if self.draining:
            raise DrainingError(
                f"The server is shutting down, so the {purpose} step was not started; the thread is at its last "
                "checkpoint. Retry (refine without a query, or resume, continues it)."
            )
        sampling = for_role(sampling, purpose)
        hint = _with_max_tokens_hint(overflow_hint, sampling.get("max_tokens"))
        text, finish = await self._ask(sampling, messages, purpose, hint, bind)
        if finish == "length":
            return await self._truncated(sampling, messages, purpose, hint, text, bind)
        return Reply(_non_empty(text, purpose))

    async def _ask(
        self, sampling: dict[str, Any], messages: list[BaseMessage], purpose: str, hint: str, bind: dict | None
    ) -> tuple[str, str | None]:
        """One call, its tokens and cost noted for the step that made it (nodes/usage.py)."""
        text, finish, reply = await ask_reply(self.get(sampling, bind), messages, purpose, hint)
        counted = usage.reported(reply)
        estimated = counted is None
        if counted is None:
            counted = await usage.estimate(messages, text)
        model = sampling["model"]
        base_url = endpoint_of(self.settings, sampling).base_url
        usage.note_call(
            {
                "model": model,
                "input_tokens": counted[0],
                "output_tokens": counted[1],
                "estimated": estimated,
                "cost": await cost_of(self.settings, model, base_url, counted[0], counted[1]),
            }
        )
        return text, finish

    async def _truncated(
        self,
        sampling: dict[str, Any],
        messages: list[BaseMessage],
        purpose: str,
        hint: str,
        text: str,
        bind: dict[str, Any] | None = None,
    ) -> Reply:
        limit = sampling.get("max_tokens")
        policy = self.settings.on_truncation
        note: dict[str, Any] = {"finish_reason": "length", "max_tokens": limit}
        cut = f"The model's {purpose} reply was cut off at " + (
            f"max_tokens={limit}" if limit else "the server's output limit (no max_tokens was set)"
        )
        if policy == "accept":
            return Reply(_non_empty(text, purpose), {**note, "action": "accepted"})
        if policy == "retry" and limit:
            room = 2 * int(limit)
            try:
                text, finish = await self._ask({**sampling, "max_tokens": room}, messages, purpose, hint, bind)
            except ContextOverflowError as exc:
                raise TruncatedReplyError(
                    f"{cut}, and a retry with max_tokens={room} does not fit the model's context window "
                    f"({exc.message}). Nothing was stored."
                ) from None
            if finish != "length":
                return Reply(_non_empty(text, purpose), {**note, "action": "retried", "retry_max_tokens": room})
            cut += f", and again at max_tokens={room}"
        raise TruncatedReplyError(
            f"{cut} (finish_reason=length); nothing was stored. Supply the text yourself, start the query again with "
            "a larger sampling.max_tokens, or set REDRAFT_ON_TRUNCATION=accept to keep cut replies."
        )


def truncation_update(reply: Reply, slot: int, node: str, n: int | None = None) -> dict:
    """The ``truncations`` log entry for a step whose reply was cut at max_tokens (empty when it was not)."""
    if reply.truncation is None:
        return {}
    return {"truncations": [{"slot": slot, "node": node, **({"n": n} if n is not None else {}), **reply.truncation}]}


async def ask(model: Runnable, messages: list[BaseMessage], purpose: str, hint: str = "") -> tuple[str, str | None]:
    """One chat completion: its text and finish_reason (streamed or not). Every failure becomes a ``ModelError``
    without secrets in it. Measured (metrics, a GenAI span when tracing is on) by ``ModelCall``."""
    text, finish, _ = await ask_reply(model, messages, purpose, hint)
    return text, finish


async def ask_reply(
    model: Runnable, messages: list[BaseMessage], purpose: str, hint: str = ""
) -> tuple[str, str | None, Any]:
    """``ask``, also returning the reply message (its ``usage_metadata``: nodes/usage.py)."""
    with ModelCall(model, purpose) as call:
        try:
            try:
                reply = await model.ainvoke(messages)
            except ValueError as exc:
                if "No generations found in stream" not in str(exc):
                    raise
                # llama-cpp-python answers a streamed request it cannot serve (a prompt over its context window)
                # with HTTP 200 and an empty event stream, keeping the reason in its own log; unstreamed, the same
                # request gets the reason (or, if it was a glitch, the reply).
                reply = await model.ainvoke(messages, stream=False)
        except openai.APIError as exc:
            raise model_error(exc, purpose, hint) from None
        except httpx2.TimeoutException:  # REQUEST_TIMEOUT passed in the middle of a streamed reply (not retried)
            raise ModelError(f"The model endpoint timed out during the {purpose} reply.") from None
        except (json.JSONDecodeError, httpx.DecodingError, KeyError, TypeError):
            raise ModelError(f"The model endpoint returned a malformed response to the {purpose} request.") from None
        call.replied(reply)
    content = reply.content
    if isinstance(content, list):  # content blocks
        content = "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    # Non-streamed replies carry finish_reason in response_metadata; streamed ones in the last chunk's, which
    # langchain merges into the aggregated message's response_metadata.
    finish = (getattr(reply, "response_metadata", None) or {}).get("finish_reason")
    return (content or "").strip(), finish, reply


def model_error(exc: openai.APIError, purpose: str, hint: str = "") -> ModelError:
    if isinstance(exc, openai.RateLimitError):
        return ModelError(f"The model endpoint kept rate-limiting the {purpose} request (429) after retries.")
    if isinstance(exc, openai.APITimeoutError):
        return ModelError(f"The model endpoint timed out on the {purpose} request after retries.")
    if isinstance(exc, openai.APIConnectionError):
        return ModelError(f"Cannot reach the model endpoint for the {purpose} request.")
    if isinstance(exc, openai.AuthenticationError):
        return ModelError("The model endpoint rejected the API key (401).", retryable=False)
    if isinstance(exc, openai.APIResponseValidationError):
        return ModelError(f"The model endpoint returned a malformed response to the {purpose} request.")
    status = getattr(exc, "status_code", None)
    reason = server_reason(exc)
    if (status is None or status in (400, 413, 422)) and is_context_overflow(exc):
        return ContextOverflowError(
            f"The model server refused the {purpose} prompt as larger than its context window: {reason}. "
            f"Resuming repeats this refusal; instead {hint or 'shorten the text'}."
        )
    if status is None:  # an error event inside a streamed reply
        return ModelError(f"The model endpoint reported an error during the {purpose} reply: {reason}.")
    return ModelError(
        f"The model endpoint answered HTTP {status} to the {purpose} request: {reason}.",
        retryable=status >= 500 or status == 429,
    )


def is_context_overflow(exc: openai.APIError) -> bool:
    body = exc.body if isinstance(exc.body, dict) else {}
    parts = [str(body.get(k) or "") for k in ("message", "type", "code")]
    parts += [exc.message or "", exc.body if isinstance(exc.body, str) else ""]
    text = " ".join(parts).lower()
    return any(marker in text for marker in OVERFLOW_MARKERS)


def server_reason(exc: openai.APIError) -> str:
    """The model server's own explanation, sanitised: one line, no control characters, no credentials, bounded."""
    body = exc.body
    if isinstance(body, dict):
        reason = str(body.get("message") or body.get("type") or body.get("code") or "")
        # llama.cpp puts the numbers beside its message; keep them when the message does not spell them out
        counts = {k: body[k] for k in ("n_prompt_tokens", "n_ctx") if isinstance(body.get(k), int)}
        if counts and not all(str(v) in reason for v in counts.values()):
            reason += " (" + ", ".join(f"{k}={v}" for k, v in counts.items()) + ")"
    elif isinstance(body, str):
        reason = body
    else:
        reason = re.sub(r"^Error code: \d+( - )?", "", exc.message or "")
    return sanitise(reason) or "no reason given"


def sanitise(text: str, limit: int = REASON_CHARS) -> str:
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)  # terminal colour codes
    text = " ".join(re.sub(r"[\x00-\x1f\x7f-\x9f]", " ", text).split())
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    text = text.rstrip(".")
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _with_max_tokens_hint(hint: str, max_tokens: int | None) -> str:
    if not max_tokens:
        return hint
    extra = f"a new query may also ask for a smaller sampling.max_tokens (this one asks for {max_tokens})"
    return f"{hint}; {extra}" if hint else extra


def _non_empty(text: str, purpose: str) -> str:
    if not text:
        raise ModelError(f"The model returned empty content for the {purpose} request.")
    return text
