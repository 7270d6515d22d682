"""Property: two replicas on one PostgreSQL, and SQLite, answer exactly as one in-memory process does, operation by
operation.

Hypothesis draws a sequence of operations (new queries long enough to cross the delta logs' snapshots, whole
refines, single steps with the model's or a human's text, gate decisions, forks and replays at any history entry,
and the database ending every connection both replicas hold) and, for each, the PostgreSQL replica that runs it.
The sequence runs on the memory backend, on SQLite and on two PostgreSQL persistences, each with its own pool,
saver, head cache and snapshot cache, as two server processes have. So the PostgreSQL side goes through every read
path its saver has (a step from its own last run, a walk after the other replica's step, a first read that decodes
the snapshots, revisions stored as patches, packs), interleaved with time travel.

After every operation every backend must have answered alike (the same result or the same refusal), and SQLite and
both replicas must read the thread's status as the memory backend does. At the end, every history entry and the state
at it must match. Checkpoint ids and times differ between backends: ids are compared by their place in the thread's
history, and times are left out.
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from redraft.errors import RedraftError
from redraft.graph import timetravel as tt
from redraft.graph.checkpointer import open_persistence
from redraft.graph.runner import Runner
from redraft.graph.state import SNAPSHOT_EVERY
from redraft.observability import metrics
from tests.conftest import make_settings, new_thread

pytestmark = pytest.mark.postgres

OPS = ("step", "step", "resume", "refine", "fork", "replay", "query", "query", "cut")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
VOLATILE = {"created_at", "duration_s"}


def _masked(value: Any, ids: dict[str, int] | None = None) -> Any:
    """``value`` with times left out and checkpoint ids replaced by their place in the history (or a mark)."""
    if isinstance(value, dict):
        return {k: _masked(v, ids) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_masked(v, ids) for v in value]
    if isinstance(value, str) and UUID.fullmatch(value):
        return f"#{ids[value]}" if ids is not None and value in ids else "#"
    if isinstance(value, str):
        return UUID.sub("#", value)
    return value


async def _history(runner: Runner, thread: str) -> list[dict]:
    """Every history entry, newest first."""
    entries, before = [], None
    while True:
        page = await tt.history(runner, thread, limit=200, before=before)
        entries += page["checkpoints"]
        before = page["next_before"]
        if before is None:
            return entries


async def _outcome(call) -> Any:
    """What a call answered, or the refusal it raised (its type and message)."""
    try:
        return _masked(await call())
    except RedraftError as exc:
        return {"refused": type(exc).__name__, "message": _masked(str(exc))}


class Sides:
    """The same thread on the memory backend, on SQLite and on two PostgreSQL replicas."""

    def __init__(self, memory: Runner, sqlite: Runner, replicas: tuple[Runner, Runner], thread: str) -> None:
        self.memory, self.sqlite, self.replicas, self.thread = memory, sqlite, replicas, thread
        self.readers = (sqlite, *replicas)

    async def alike(self, replica: int, op) -> None:
        """Run ``op(runner, thread)`` on the memory backend, on SQLite and on one PostgreSQL replica: they must
        answer alike."""
        expected = await _outcome(lambda: op(self.memory, self.thread))
        assert await _outcome(lambda: op(self.sqlite, self.thread)) == expected
        assert await _outcome(lambda: op(self.replicas[replica], self.thread)) == expected
        await self.check_status()

    async def check_status(self) -> None:
        expected = await _outcome(lambda: self.memory.status(self.thread))
        for reader in self.readers:
            assert await _outcome(lambda r=reader: r.status(self.thread)) == expected

    async def check_history(self) -> None:
        """Every history entry and the state at it, ids compared by their place in the history."""
        mine = await _history(self.memory, self.thread)
        ids = {e["checkpoint_id"]: i for i, e in enumerate(reversed(mine))}
        expected = [_masked(e, ids) for e in mine]
        states = [_masked(await tt.state_at(self.memory, self.thread, e["checkpoint_id"]), ids) for e in mine]
        for reader in self.readers:  # each replica reads every state, so both decode the thread's snapshots cold too
            theirs = await _history(reader, self.thread)
            their_ids = {e["checkpoint_id"]: i for i, e in enumerate(reversed(theirs))}
            assert [_masked(e, their_ids) for e in theirs] == expected
            for entry, state in zip(theirs, states, strict=True):
                got = _masked(await tt.state_at(reader, self.thread, entry["checkpoint_id"]), their_ids)
                assert got == state


async def _at(runner: Runner, thread: str, index: int) -> str:
    """The checkpoint id at ``index`` of the thread's history, oldest first (the same place on every backend)."""
    entries = await _history(runner, thread)
    return entries[len(entries) - 1 - index]["checkpoint_id"]


@contextlib.asynccontextmanager
async def _replicas(url: str, stub):
    settings = make_settings(url, stub)
    async with open_persistence(settings) as a, open_persistence(settings) as b:
        yield Runner(a, settings), Runner(b, settings)


# no shrinking: an example takes seconds, and the first failing one is reported with every draw it made
@settings(
    max_examples=6,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    data=st.data(),
    companion=st.sampled_from(["generic", "generic", "summary"]),
    ops=st.lists(st.sampled_from(OPS), min_size=4, max_size=14),
)
async def test_two_replicas_answer_as_one_memory_process(pg_url, stub, tmp_path, monkeypatch, data, companion, ops):
    stub.configure(draft_words=40, critique_words=4, changes=[3])
    thread = new_thread()
    reads: Counter = Counter()  # where the PostgreSQL side's reads came from (the memory backend counts none)
    monkeypatch.setattr(metrics, "history_read", lambda source: reads.update([source]))
    monkeypatch.setattr(metrics, "snapshot_reads", lambda reused, fetched: reads.update(reused=reused, fetched=fetched))
    settings = make_settings("memory", stub)
    lite = make_settings(str(tmp_path / f"{thread}.sqlite"), stub)
    async with (
        open_persistence(settings) as memory,
        open_persistence(lite) as sqlite,
        _replicas(pg_url, stub) as replicas,
    ):
        sides = Sides(Runner(memory, settings), Runner(sqlite, lite), replicas, thread)
        queries = 0

        def replica() -> int:
            return data.draw(st.integers(0, 1), label="replica")

        async def query(loops: int | None = None, on: int | None = None) -> None:
            nonlocal queries
            queries += 1
            # up to 14 loops: 29 updates of each log, so a few queries cross the snapshots (every SNAPSHOT_EVERY)
            loops = loops or data.draw(st.integers(1, 14), label="max_loops")
            text = f"Question {queries}."

            async def op(runner, thread):
                return await runner.refine(thread, companion, text, max_loops=loops, similarity_threshold=1.0)

            await sides.alike(replica() if on is None else on, op)

        # 29 updates of each log; a run that starts from its replica's last one; then the other replica's steps
        # (which walk: it never ran this thread) cross the logs' first snapshot
        await query(14, on=0)
        await query(on=0)
        await query(on=1)
        for name in ops:
            if name == "query":
                await query()
            elif name == "cut":  # pg_terminate_backend on every pooled connection: the next op must not notice
                await _cut(pg_url)
                await sides.check_status()
            elif name == "refine":
                await sides.alike(replica(), lambda runner, thread: runner.refine(thread, companion))
            elif name == "step":
                how = data.draw(st.sampled_from(["model", "human", "edit"]), label="step")
                await sides.alike(replica(), _step(how))
            elif name == "resume":
                decision = data.draw(
                    st.sampled_from(
                        [None, {"action": "approve"}, {"action": "replace", "text": "Human text at a gate."}]
                    ),
                    label="decision",
                )
                await sides.alike(replica(), _resume(decision))
            else:
                size = len(await _history(sides.memory, thread))
                index = data.draw(st.integers(0, size - 1), label=f"{name} at")
                edit = data.draw(st.sampled_from(["critique", "revision"]), label="edit") if name == "fork" else None
                await sides.alike(replica(), _travel(name, index, edit))
        await sides.check_history()
    assert SNAPSHOT_EVERY == 32  # the query lengths above are chosen against it
    # every read path ran: a step from its replica's last run, walks, and (auto mode runs far enough; a step-mode
    # refine stops at its first gate) snapshots decoded and snapshots reused
    assert reads["last_run"] and reads["walk"], reads
    assert companion == "summary" or (reads["fetched"] and reads["reused"]), reads


async def _cut(url: str) -> None:
    """End every other connection to the test's database, waiting (up to 5 s each) until each backend is gone."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        cur = await admin.execute(
            "SELECT bool_and(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert (await cur.fetchone())[0] is not False


def _step(how: str):
    async def op(runner: Runner, thread: str) -> dict:
        phase = (await runner.status(thread))["phase"]
        if phase == "ready_to_critique":
            return await runner.critique(thread, text="A human critique." if how == "human" else None)
        if phase == "needs_revision":
            if how == "edit":
                return await runner.revise(thread, critique="An edited critique.")
            return await runner.revise(thread, text="A human revision of the text." if how == "human" else None)
        return await runner.resume(thread)

    return op


def _resume(decision: dict | None):
    async def op(runner: Runner, thread: str) -> dict:
        return await runner.resume(thread, decision)

    return op


def _travel(name: str, index: int, edit: str | None):
    async def op(runner: Runner, thread: str) -> dict:
        at = await _at(runner, thread, index)
        if name == "replay":
            return await tt.replay(runner, thread, at)
        if edit == "critique":
            return await tt.fork(runner, thread, at, critique="A forked critique.")
        return await tt.fork(runner, thread, at, revision="A forked revision, short.")

    return op
