"""/healthz and /readyz of a real ``redraft serve`` over HTTP: JSON bodies with each check timed, no auth, nothing
secret; /readyz turns 503 within its timeout when PostgreSQL stops answering (a network black hole between them)
and 200 again when it is back; both answer in < 50 ms while a load of concurrent refines runs. Redis and draining
are checked in-process."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time

import httpx
import pytest

from redraft.graph.checkpointer import open_persistence
from redraft.observability.health import Readiness, RedisProbe, build_readiness
from tests.clients import PlainClient as Client
from tests.conftest import fresh_database, make_settings
from tests.pgproxy import PgProxy
from tests.servers import free_port, http_server, server_env

TOKEN = "health-test-token-8d2e"
PASSWORD_HINTS = ("postgresql://", "127.0.0.1:", TOKEN)


def assert_nothing_secret(text: str) -> None:
    for hint in PASSWORD_HINTS:
        assert hint not in text, (hint, text)


@pytest.mark.postgres
async def test_readyz_follows_the_database_and_health_stays_fast_under_load(pg_url, stub):
    proxy = PgProxy.for_url(pg_url).start()
    stub.configure(latency_ms=20, critic_stop_round=None)
    env = server_env(
        proxy.url_for(pg_url), stub.base_url, REDRAFT_AUTH_TOKENS=f'{{"{TOKEN}": "ops"}}', REDRAFT_POOL_MAX_SIZE="4"
    )
    try:
        with http_server(env) as server:
            base = server.url.removesuffix("/mcp")
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                alive = await http.get("/healthz")  # no token: health takes no auth
                assert alive.status_code == 200 and alive.json()["status"] == "ok"
                ready = await http.get("/readyz")
                assert ready.status_code == 200, ready.text
                body = ready.json()
                assert body["status"] == "ready"
                assert set(body["checks"]) == {"database", "migrations", "not_draining"}
                for check in body["checks"].values():
                    assert check["ok"] is True and isinstance(check["duration_ms"], float)
                assert body["checks"]["migrations"]["version"] == body["checks"]["migrations"]["expected"]
                assert_nothing_secret(ready.text)

                # under load: 10 concurrent refines (4 pooled connections) while both endpoints are probed
                timings: dict[str, list[float]] = {"/healthz": [], "/readyz": []}
                server_side: list[float] = []

                async def load(client: Client, n: int) -> None:
                    sid = (await client.call_tool("create_session", {})).structured_content["session_id"]
                    await client.call_tool("refine", {"session_id": sid, "query": f"load {n}", "max_loops": 2})

                async def probe() -> None:
                    while True:
                        for path in timings:
                            started = time.perf_counter()
                            response = await http.get(path)
                            timings[path].append((time.perf_counter() - started) * 1000)
                            assert response.status_code == 200, response.text
                            if path == "/readyz":
                                server_side.extend(c["duration_ms"] for c in response.json()["checks"].values())
                        await asyncio.sleep(0.02)

                async with Client(server.url, auth=TOKEN) as client:
                    prober = asyncio.create_task(probe())
                    await asyncio.gather(*(load(client, n) for n in range(10)))
                    prober.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await prober
                for path, values in timings.items():
                    assert len(values) >= 5, timings
                    # < 50 ms; on the shared 2-core test machine (load ~8) the event loop itself stalls now and then,
                    # so the typical probe is held to 50 ms and the slowest to 1 s (a pool wait would take 10 s)
                    assert statistics.median(values) < 50, (path, sorted(values))
                    assert max(values) < 1000, (path, sorted(values))
                assert statistics.median(server_side) < 50, sorted(server_side)

                # PostgreSQL stops answering (packets dropped, nothing reset): not ready within a probe or two (the
                # checks of the last second are shared), each answering within the check's timeout, never a pool wait
                proxy.set_mode("stall")
                proxy.cut()
                deadline = time.monotonic() + 5
                while True:
                    started = time.perf_counter()
                    down = await http.get("/readyz")
                    assert time.perf_counter() - started < 2.0  # REDRAFT_HEALTH_TIMEOUT_SECONDS=0.5
                    if down.status_code == 503 or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.1)
                assert down.status_code == 503, down.text
                checks = down.json()["checks"]
                assert down.json()["status"] == "not_ready"
                assert checks["database"]["ok"] is False
                assert checks["database"]["error"] in ("timeout", "OperationalError")  # stalled, or reset by the cut
                assert checks["migrations"]["ok"] is False and checks["not_draining"]["ok"] is True
                assert_nothing_secret(down.text)
                assert (await http.get("/healthz")).status_code == 200  # alive all the same

                proxy.set_mode("pass")
                for _ in range(50):
                    back = await http.get("/readyz")
                    if back.status_code == 200:
                        break
                    await asyncio.sleep(0.1)
                assert back.status_code == 200, back.text
    finally:
        proxy.stop()


async def test_readiness_checks_redis_and_draining(redis_server):
    class Database:
        async def check(self):
            from redraft.observability.health import Check

            return Check().done(True), Check().done(True)

        async def close(self):
            pass

    draining = False
    readiness = Readiness(Database(), RedisProbe(redis_server, 0.5), lambda: draining)
    try:
        ready, body = await readiness.check()
        assert ready and body["checks"]["redis"]["ok"] is True
        draining = True
        ready, body = await readiness.check()
        assert not ready and body["checks"]["not_draining"]["ok"] is False and body["status"] == "not_ready"
    finally:
        await readiness.close()

    nobody = Readiness(Database(), RedisProbe(f"redis://127.0.0.1:{free_port()}/0", 0.5), lambda: False)
    try:
        ready, body = await nobody.check()
        assert not ready and body["checks"]["redis"]["ok"] is False and body["checks"]["redis"]["error"]
        assert "127.0.0.1" not in str(body)
    finally:
        await nobody.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "memory"])
async def test_readiness_sees_a_schema_that_is_not_migrated(backend, tmp_path, stub, request):
    """Each backend's database and migrations checks, in-process: ready on a set-up database; not ready, naming
    ``migrations``, once one of redraft's tables is gone."""
    with contextlib.ExitStack() as stack:
        if backend == "postgres":
            url = stack.enter_context(fresh_database(request.getfixturevalue("pg_admin_url")))
        else:
            url = "memory" if backend == "memory" else str(tmp_path / "ready.sqlite")
        settings = make_settings(url, stub)
        async with open_persistence(settings) as persistence:
            readiness = build_readiness(persistence, settings, lambda: False)
            try:
                ready, body = await readiness.check()
                assert ready, body
                await persistence.db.execute("DROP TABLE redraft_stats")
                readiness._last = None  # the next probe checks again instead of sharing the last round
                ready, body = await readiness.check()
                assert not ready and body["checks"]["database"]["ok"] is True
                migrations = body["checks"]["migrations"]
                assert migrations["ok"] is False and migrations["error"] == "not_applied"
            finally:
                await readiness.close()
