"""redraft's checkpointers pass LangGraph's own conformance suite (``langgraph-checkpoint-conformance``).

Each saver ``open_persistence`` builds -- PostgreSQL (pooled, lock-free, fenced pipelined writes), SQLite and the
in-memory one, all with redraft's compact channel versions and JSON serde -- must stay a real LangGraph checkpointer
that Studio, ``aget_state_history`` and forks can use. The PostgreSQL saver also runs the suite with a step's fence
set, so every write goes through the fenced transaction (``redraft_fence_check`` first) as it does while a step runs.
"""

from __future__ import annotations

import pytest
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.report import ProgressCallbacks

from redraft.graph.checkpointer import open_persistence
from redraft.graph.fencing import FENCE, Fence
from redraft.settings import load_settings
from tests.conftest import fresh_database


def _settings(url: str):
    return load_settings(database_url=url, base_url="http://unused.invalid/v1")


async def _conformance(url: str, *, fenced: bool = False) -> None:
    failures: list[str] = []

    def record(capability: str, test: str, passed: bool, error: str | None) -> None:
        if not passed:
            failures.append(f"{capability}/{test}: {error}")

    @checkpointer_test(name=f"redraft {url.split(':')[0]}{' fenced' if fenced else ''}")
    async def saver():
        async with open_persistence(_settings(url)) as p:
            token = lease = None
            if fenced:
                lease = await p.db.grant("conformance:generic")
                token = FENCE.set(Fence(lease.thread_id, lease.token))
            try:
                yield p.saver
            finally:
                if token is not None:
                    FENCE.reset(token)
                    await p.db.release(lease)

    report = await validate(saver, progress=ProgressCallbacks(on_test_result=record))
    assert not failures, "\n".join(failures)
    assert report.passed_all_base(), report.to_dict()
    ran = {name for name, r in report.results.items() if r.detected}
    assert {"put", "put_writes", "get_tuple", "list", "delete_thread"} <= ran


@pytest.mark.parametrize("fenced", [False, True], ids=["plain", "fenced"])
async def test_postgres_saver_conforms(pg_admin_url, fenced):
    with fresh_database(pg_admin_url) as url:
        await _conformance(url, fenced=fenced)


async def test_sqlite_saver_conforms(tmp_path):
    await _conformance(str(tmp_path / "conformance.sqlite"))


async def test_memory_saver_conforms():
    await _conformance("memory")
