"""The progress bus of background runs: ``publish(run_id, event)``, ``subscribe(run_id)``, ``latest(run_id)``.

Events are small JSON dicts (a step ended, tokens so far, the run finished). The bus carries no truth -- the run's
row in ``redraft_runs`` does -- so a lost event costs at most a poll interval, never a result.

* ``MemoryBus``: in-process (no ``REDRAFT_REDIS_URL``): progress is seen only by clients of this process.
* ``RedisBus``: Redis pub/sub for live events plus one key per run holding the latest event, so a client polling
  replica B sees what replica A is doing within a round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator

log = logging.getLogger("redraft.bus")

LATEST_TTL_SECONDS = 24 * 3600


class Bus:
    """Interface of both buses."""

    async def publish(self, run_id: str, event: dict) -> None:
        """Send ``event`` to every subscriber of ``run_id`` and remember it as the run's latest event."""
        raise NotImplementedError

    def subscribe(self, run_id: str) -> AsyncIterator[dict]:
        """An async iterator of the run's events from now on (close it, or leave its ``async for``, to stop)."""
        raise NotImplementedError

    async def latest(self, run_id: str) -> dict | None:
        """The run's most recent event, or None."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release connections."""


class MemoryBus(Bus):
    """Progress within one process."""

    def __init__(self, keep: int = 10_000) -> None:
        self._latest: dict[str, dict] = {}
        self._subscribers: dict[str, set[asyncio.Queue]] = defaultdict(set)
        self._keep = keep

    async def publish(self, run_id: str, event: dict) -> None:
        self._latest.pop(run_id, None)
        self._latest[run_id] = event
        while len(self._latest) > self._keep:  # oldest first: dicts keep insertion order
            self._latest.pop(next(iter(self._latest)))
        for queue in list(self._subscribers.get(run_id, ())):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event)

    async def subscribe(self, run_id: str) -> AsyncIterator[dict]:
        queue: asyncio.Queue = asyncio.Queue(maxsize=1000)
        self._subscribers[run_id].add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers[run_id].discard(queue)
            if not self._subscribers[run_id]:
                self._subscribers.pop(run_id, None)

    async def latest(self, run_id: str) -> dict | None:
        return self._latest.get(run_id)


class RedisBus(Bus):
    """Progress shared by every replica: ``PUBLISH redraft:run:<id>`` and ``SET redraft:run:<id>:latest``."""

    def __init__(self, url: str, prefix: str = "redraft:run:") -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)
        self._prefix = prefix

    def _channel(self, run_id: str) -> str:
        return f"{self._prefix}{run_id}"

    async def publish(self, run_id: str, event: dict) -> None:
        data = json.dumps(event)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(f"{self._channel(run_id)}:latest", data, ex=LATEST_TTL_SECONDS)
                pipe.publish(self._channel(run_id), data)
                await pipe.execute()
        except Exception as exc:  # progress is best effort: the run itself must not fail on it
            log.info("progress event for %s not published (%s)", run_id, type(exc).__name__)

    async def subscribe(self, run_id: str) -> AsyncIterator[dict]:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(self._channel(run_id))
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    yield json.loads(message["data"])
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(pubsub.aclose())

    async def latest(self, run_id: str) -> dict | None:
        try:
            data = await self._redis.get(f"{self._channel(run_id)}:latest")
        except Exception as exc:
            log.info("latest progress of %s not read (%s)", run_id, type(exc).__name__)
            return None
        return json.loads(data) if data else None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._redis.aclose()


def open_bus(redis_url: str | None) -> Bus:
    """The bus for ``REDRAFT_REDIS_URL``: Redis when set (and not memory://), else in-process."""
    if redis_url and not redis_url.startswith("memory://"):
        return RedisBus(redis_url)
    return MemoryBus()
