"""Convergence similarity by embeddings (``REDRAFT_SIMILARITY=embedding``): the cosine similarity of two versions'
embeddings from any OpenAI-compatible ``/v1/embeddings`` endpoint (langchain-openai ``OpenAIEmbeddings``: OpenAI,
Ollama, llama.cpp, vLLM...), clamped to [0, 1].

When the endpoint is absent or fails (unreachable, no embeddings route, a bad reply), the step falls back to the text
similarity of graph/convergence.py, logs why, and its ``scores`` entry says so: ``"method": "text", "fallback":
reason``; an embedding-scored entry carries ``"method": "embedding"``. With ``REDRAFT_SIMILARITY=text`` (the default)
entries are as they always were. Each text's vector is cached (each version is compared twice: with the one before
and the one after), so a refine loop embeds every version once.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import OrderedDict
from typing import Any

from langchain_openai import OpenAIEmbeddings

from redraft.errors import ConfigError
from redraft.graph.convergence import similarity_async
from redraft.nodes.model import max_tokens_field, sanitise
from redraft.settings import Settings

log = logging.getLogger("redraft.embeddings")

CLIENT_CACHE_SIZE = 4
VECTOR_CACHE_SIZE = 256
MAX_RETRIES = 1  # an absent endpoint should cost a fallback quickly, not a full retry schedule

_clients: OrderedDict[tuple, OpenAIEmbeddings] = OrderedDict()
_vectors: OrderedDict[tuple, list[float]] = OrderedDict()


def _endpoint(settings: Settings) -> tuple[str | None, str]:
    base_url = settings.embedding_base_url or settings.base_url
    secret = settings.embedding_api_key if settings.embedding_api_key is not None else settings.api_key
    key = secret.get_secret_value()
    if not key:
        if not base_url:
            raise ConfigError("REDRAFT_EMBEDDING_API_KEY or REDRAFT_API_KEY is needed for OpenAI embeddings.")
        key = "not-needed"
    return base_url, key


def client(settings: Settings) -> OpenAIEmbeddings:
    """The embeddings client for the settings' endpoint and model (cached)."""
    base_url, key = _endpoint(settings)
    cache_key = (settings.embedding_model, base_url, key, settings.request_timeout)
    found = _clients.get(cache_key)
    if found is not None:
        _clients.move_to_end(cache_key)
        return found
    openai = max_tokens_field("auto", base_url) == "max_completion_tokens"  # OpenAI itself (or Azure)
    built = OpenAIEmbeddings(
        model=settings.embedding_model,
        base_url=base_url,
        api_key=key,  # type: ignore[arg-type]
        # other servers take raw text, not tiktoken ids, and may not decode base64 vectors
        check_embedding_ctx_length=openai,
        model_kwargs={} if openai else {"encoding_format": "float"},
        timeout=settings.request_timeout,
        max_retries=MAX_RETRIES,
    )
    _clients[cache_key] = built
    while len(_clients) > CLIENT_CACHE_SIZE:
        _clients.popitem(last=False)
    return built


def cosine(a: list[float], b: list[float]) -> float:
    if len(a) != len(b) or not a:
        raise ValueError(f"embeddings of different or no dimensions ({len(a)} and {len(b)})")
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    if not norm:
        raise ValueError("an embedding of length zero")
    return min(1.0, max(0.0, dot / norm))


async def embed(settings: Settings, texts: list[str]) -> list[list[float]]:
    """The vectors of ``texts``, from the cache or one request for the ones not cached."""
    base_url = settings.embedding_base_url or settings.base_url
    keys = [(settings.embedding_model, base_url, hashlib.sha256(t.encode()).hexdigest()) for t in texts]
    missing = [i for i, k in enumerate(keys) if k not in _vectors]
    if missing:
        got = await client(settings).aembed_documents([texts[i] for i in missing])
        if len(got) != len(missing):
            raise ValueError(f"{len(got)} embeddings for {len(missing)} texts")
        for i, vector in zip(missing, got, strict=True):
            _vectors[keys[i]] = [float(x) for x in vector]
    out = []
    for k in keys:
        _vectors.move_to_end(k)
        out.append(_vectors[k])
    while len(_vectors) > VECTOR_CACHE_SIZE:
        _vectors.popitem(last=False)
    return out


async def similarity_of(settings: Settings, a: str, b: str) -> tuple[float, dict[str, Any]]:
    """The similarity of two consecutive versions by the configured method, and the fields it adds to the ``scores``
    entry (none for text similarity)."""
    if settings.similarity != "embedding":
        return await similarity_async(a, b), {}
    if a == b:
        return 1.0, {"method": "embedding"}
    try:
        va, vb = await embed(settings, [a, b])
        return cosine(va, vb), {"method": "embedding"}
    except Exception as exc:  # whatever the endpoint did, the step goes on with text similarity, and says so
        reason = sanitise(f"{type(exc).__name__}: {exc}", 200)
        log.warning("Embedding similarity failed (%s); this step uses text similarity.", reason)
        return await similarity_async(a, b), {"method": "text", "fallback": reason}


def clear() -> None:
    """Forget cached clients and vectors (tests)."""
    _clients.clear()
    _vectors.clear()
