"""Readable checkpoint metadata: each checkpoint of the public graph says where the thread's query stood.

LangGraph writes ``source``/``step``/``parents`` into a checkpoint's metadata and merges the run config's static
``metadata``; it has no per-step hook. ``LabellingSaver`` wraps the server's checkpointer and adds, to every
checkpoint of a thread's root namespace:

* ``phase``: empty, needs_draft, ready_to_critique, needs_revision or done;
* ``slot``: the run_log slot (query) it belongs to, or null before the first query;
* ``iteration``: the revisions made in that slot so far;
* ``tokens`` and ``cost``: of the model calls of the step that wrote it (absent when it made none; cost null when a
  price is unknown).

Nothing is replayed: like redraft's own history (``graph/timetravel.py``), the labels come from the run_log events
and outcomes that the step wrote (events name their slot and item number), from a log the checkpoint stores whole
(forks), or else from the parent checkpoint's labels (kept in memory, or read back from its metadata once).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver, ChannelVersions, Checkpoint, CheckpointMetadata
from langgraph.pregel._checkpoint import put_writes_accepts_task_path

from redraft.graph.timetravel import _event_counts, _slot_counts, phase_of_summary
from redraft.nodes.usage import total

MEMO_SIZE = 4096  # checkpoints (and pending steps) remembered per saver; older ones are read back from metadata
LABELS = ("phase", "slot", "iteration")


def _items(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _stored(values: dict, channel: str) -> list | None:
    if channel not in values:
        return None
    value = values[channel]
    return getattr(value, "value", value) or []


def counts_from_labels(meta: dict) -> dict | None:
    """The slot counts a checkpoint's labels stand for (enough to continue from), or None if it has none."""
    if "phase" not in meta:
        return None
    phase, k = meta["phase"], meta.get("iteration") or 0
    if phase == "empty":
        return {"slot": None, "drafted": False, "critiques": None, "revisions": None, "done": False}
    return {
        "slot": meta.get("slot"),
        "drafted": phase != "needs_draft",
        "critiques": k + 1 if phase == "needs_revision" else k,
        "revisions": k,
        "done": phase == "done",
    }


def labels_of(counts: dict) -> dict:
    phase = phase_of_summary({**counts, "stop_reason": "done" if counts["done"] else None})
    return {"phase": phase, "slot": counts["slot"], "iteration": counts["revisions"] or 0}


class LabellingSaver(BaseCheckpointSaver):
    """A checkpointer that delegates everything to ``inner`` and labels each root checkpoint's metadata."""

    def __init__(self, inner: BaseCheckpointSaver) -> None:
        super().__init__(serde=inner.serde)
        self.inner = inner
        self._writes: OrderedDict[tuple, list] = OrderedDict()  # (thread, checkpoint id) -> its steps' log writes
        self._counts: OrderedDict[tuple, dict] = OrderedDict()  # (thread, checkpoint id) -> its slot counts
        self._spent: list[dict] = []

    def __getattr__(self, name: str) -> Any:  # anything else the server's saver offers
        return getattr(self.inner, name)

    @property
    def config_specs(self) -> list:
        return self.inner.config_specs

    # --- labelling ------------------------------------------------------------------------------------------------

    @staticmethod
    def _key(config: dict) -> tuple | None:
        conf = config.get("configurable") or {}
        if conf.get("checkpoint_ns") or not conf.get("checkpoint_id"):
            return None
        return (conf.get("thread_id"), conf["checkpoint_id"])

    def _remember(self, memo: OrderedDict, key: tuple, value: Any) -> None:
        memo[key] = value
        memo.move_to_end(key)
        while len(memo) > MEMO_SIZE:
            memo.popitem(last=False)

    def _note_writes(self, config: dict, writes: Sequence[tuple[str, Any]]) -> None:
        key = self._key(config)
        logged = [(ch, v) for ch, v in writes if ch in ("run_log", "outcomes", "usage")]
        if key is not None and logged:
            self._remember(self._writes, key, [*self._writes.get(key, []), *logged])

    def _label(self, config: dict, checkpoint: Checkpoint, parent: dict | None) -> dict:
        """The new checkpoint's counts, from what it stores, what its step wrote, or ``parent`` (its parent's
        counts, or None for a thread's first checkpoint)."""
        values = checkpoint.get("channel_values") or {}
        key = self._key(config)
        writes = self._writes.pop(key, []) if key else []
        events = [e for ch, v in writes if ch == "run_log" for e in _items(v) if isinstance(e, dict) and "op" in e]
        outcomes = [o for ch, v in writes if ch == "outcomes" for o in _items(v) if isinstance(o, dict)]
        spent = [u for ch, v in writes if ch == "usage" for u in _items(v) if isinstance(u, dict)]
        stored_log, stored_outcomes = _stored(values, "run_log"), _stored(values, "outcomes")
        if stored_log is not None:
            counts = {**_slot_counts(stored_log), "done": False}
        elif events:
            counts = {**_event_counts(events[-1]), "done": False}
        elif parent is not None:
            counts = dict(parent)
        else:
            counts = {**_slot_counts([]), "done": False}
        slot = counts["slot"]
        finished = [o for o in (stored_outcomes if stored_outcomes is not None else outcomes) if o.get("slot") == slot]
        if finished:
            counts["done"] = True
        elif stored_outcomes is not None or events:
            counts["done"] = False
        self._spent = spent  # the step's model calls, for this checkpoint's metadata only (never inherited)
        return counts

    def _labelled(self, config: dict, checkpoint: Checkpoint, metadata: CheckpointMetadata, parent: dict | None):
        counts = self._label(config, checkpoint, parent)
        thread = (config.get("configurable") or {}).get("thread_id")
        self._remember(self._counts, (thread, checkpoint["id"]), counts)
        spent, self._spent = self._spent, []
        step = total(spent) if spent else None
        usage = {"tokens": step["total_tokens"], "cost": step["cost"]} if step else {}
        return {**metadata, **labels_of(counts), **usage}

    def _parent_counts(self, config: dict) -> dict | None:
        key = self._key(config)
        return self._counts.get(key) if key else None

    # --- writes (labelled) ----------------------------------------------------------------------------------------

    def put(self, config, checkpoint, metadata, new_versions: ChannelVersions):
        if (config.get("configurable") or {}).get("checkpoint_ns"):
            return self.inner.put(config, checkpoint, metadata, new_versions)
        parent = self._parent_counts(config)
        if parent is None and self._key(config) is not None:
            found = self.inner.get_tuple(config)
            parent = counts_from_labels(found.metadata or {}) if found else None
        return self.inner.put(config, checkpoint, self._labelled(config, checkpoint, metadata, parent), new_versions)

    async def aput(self, config, checkpoint, metadata, new_versions: ChannelVersions):
        if (config.get("configurable") or {}).get("checkpoint_ns"):
            return await self.inner.aput(config, checkpoint, metadata, new_versions)
        parent = self._parent_counts(config)
        if parent is None and self._key(config) is not None:
            found = await self.inner.aget_tuple(config)
            parent = counts_from_labels(found.metadata or {}) if found else None
        labelled = self._labelled(config, checkpoint, metadata, parent)
        return await self.inner.aput(config, checkpoint, labelled, new_versions)

    def put_writes(self, config, writes, task_id: str, task_path: str = "") -> None:
        self._note_writes(config, writes)
        extra = {"task_path": task_path} if put_writes_accepts_task_path(self.inner.put_writes) else {}
        return self.inner.put_writes(config, writes, task_id, **extra)

    async def aput_writes(self, config, writes, task_id: str, task_path: str = "") -> None:
        self._note_writes(config, writes)
        extra = {"task_path": task_path} if put_writes_accepts_task_path(self.inner.aput_writes) else {}
        return await self.inner.aput_writes(config, writes, task_id, **extra)

    # --- everything else: the server's saver ----------------------------------------------------------------------

    def get_tuple(self, config):
        return self.inner.get_tuple(config)

    async def aget_tuple(self, config):
        return await self.inner.aget_tuple(config)

    def get(self, config):
        return self.inner.get(config)

    async def aget(self, config):
        return await self.inner.aget(config)

    def list(self, config, **kwargs) -> Iterator:
        return self.inner.list(config, **kwargs)

    def alist(self, config, **kwargs) -> AsyncIterator:
        return self.inner.alist(config, **kwargs)

    def delete_thread(self, thread_id):
        return self.inner.delete_thread(thread_id)

    async def adelete_thread(self, thread_id):
        return await self.inner.adelete_thread(thread_id)

    def delete_for_runs(self, run_ids):
        return self.inner.delete_for_runs(run_ids)

    async def adelete_for_runs(self, run_ids):
        return await self.inner.adelete_for_runs(run_ids)

    def copy_thread(self, source_thread_id, target_thread_id):
        return self.inner.copy_thread(source_thread_id, target_thread_id)

    async def acopy_thread(self, source_thread_id, target_thread_id):
        return await self.inner.acopy_thread(source_thread_id, target_thread_id)

    def prune(self, thread_ids, **kwargs):
        return self.inner.prune(thread_ids, **kwargs)

    async def aprune(self, thread_ids, **kwargs):
        return await self.inner.aprune(thread_ids, **kwargs)

    def get_delta_channel_history(self, *args, **kwargs):
        return self.inner.get_delta_channel_history(*args, **kwargs)

    async def aget_delta_channel_history(self, *args, **kwargs):
        return await self.inner.aget_delta_channel_history(*args, **kwargs)

    def get_next_version(self, current, channel):
        return self.inner.get_next_version(current, channel)

    def with_allowlist(self, extra_allowlist):
        other = LabellingSaver(self.inner.with_allowlist(extra_allowlist))
        other._writes, other._counts = self._writes, self._counts  # one memory per thread history
        return other
