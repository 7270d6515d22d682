"""What a model call cost, in US dollars: from ``REDRAFT_PRICES`` (per million tokens, by model name; ``"*"`` for
every other model, e.g. ``{"*": 0}`` for local models), else from the price table bundled with ``genai-prices``.

The bundled table is read as shipped: nothing is fetched at run time (genai-prices only downloads when its
``UpdatePrices`` is started, which redraft never does). A model priced nowhere -- an unknown name, or a local
endpoint the table does not know -- costs ``None``: unknown, never a guess. Order: the model's own setting, the
table (matched by model and endpoint URL; no base URL = OpenAI), then the ``"*"`` setting.

Importing the table takes ~0.7 s, so it happens once, off the event loop, on the first call it is needed for.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from functools import lru_cache

from redraft.settings import ModelPrice, Settings

OPENAI_URL = "https://api.openai.com/v1"
PER = 1_000_000  # prices are per million tokens

log = logging.getLogger("redraft.pricing")
_lock = threading.Lock()


def _rates(price: ModelPrice | float) -> tuple[float, float]:
    if isinstance(price, ModelPrice):
        return price.input, price.output
    return float(price), float(price)


def configured(settings: Settings, model: str, wildcard: bool) -> tuple[float, float] | None:
    """The (input, output) USD-per-million rates REDRAFT_PRICES gives ``model`` (or, with ``wildcard``, "*")."""
    prices = settings.prices
    if model in prices:
        return _rates(prices[model])
    if wildcard and "*" in prices:
        return _rates(prices["*"])
    return None


@lru_cache(maxsize=256)
def _catalog(model: str, base_url: str | None, input_tokens: int, output_tokens: int) -> float | None:
    """The bundled genai-prices table's price of one call, or None when it knows no such model at that endpoint."""
    with _lock:  # the first import is not thread-safe to race
        try:
            from genai_prices import Usage, calc_price
        except ImportError:  # pragma: no cover - a dependency; tolerated if missing
            return None
    try:
        found = calc_price(
            Usage(input_tokens=input_tokens, output_tokens=output_tokens),
            model,
            provider_api_url=base_url or OPENAI_URL,
        )
    except LookupError:
        return None
    except Exception:  # a table the installed version cannot read: unknown, never a crash
        log.warning("genai-prices could not price model %r", model, exc_info=True)
        return None
    return float(found.total_price)


def cost_now(settings: Settings, model: str, base_url: str | None, input_tokens: int, output_tokens: int):
    """The call's cost in USD, or None when no price is known (may import the table: call off the event loop)."""
    rates = configured(settings, model, wildcard=False)
    if rates is None:
        total = _catalog(model, base_url, input_tokens, output_tokens)
        if total is not None:
            return round(total, 10)
        rates = configured(settings, model, wildcard=True)
    if rates is None:
        return None
    return round((input_tokens * rates[0] + output_tokens * rates[1]) / PER, 10)


_seen: set[tuple[str, str | None]] = set()  # (model, base URL) pairs the table has been asked about once


async def cost_of(
    settings: Settings, model: str, base_url: str | None, input_tokens: int, output_tokens: int
) -> float | None:
    """``cost_now`` without blocking the event loop: the first look-up of a model in the table (which may import
    it) runs in a worker thread; later ones (the table's own look-up cached) and prices from settings run in place."""
    key = (model, base_url)
    if key in _seen or configured(settings, model, wildcard=False) is not None:
        return cost_now(settings, model, base_url, input_tokens, output_tokens)
    found = await asyncio.to_thread(cost_now, settings, model, base_url, input_tokens, output_tokens)
    _seen.add(key)
    return found


def known_price(settings: Settings, model: str, base_url: str | None) -> bool:
    """Whether calls to ``model`` at ``base_url`` have a known price (a cost budget needs one)."""
    return cost_now(settings, model, base_url, 1, 1) is not None
