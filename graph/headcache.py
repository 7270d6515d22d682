"""The values at the checkpoint a run of this process last committed, per thread: so the next step on the thread, in
this process, rebuilds its delta channels from them instead of walking the thread's history in the database.

A step tool call reads the head (its phase check) and then the graph loads it; both need every delta channel's
value, which the saver rebuilds by walking back to each channel's last snapshot (graph/pgsaver.py): two round trips
and the replay of up to ~32 writes per channel. A client stepping through a thread (draft, critique, revise, ...)
asks for the checkpoint the previous call just wrote, whose values that call's run emitted in its stream.

This holds no truth of its own. An entry answers only for the exact checkpoint id it names, and a checkpoint never
changes once written: the values at it are fixed by its ancestors, its snapshots and the writes at its ancestors,
none of which a later write changes (a fork or another replica's step makes a new checkpoint, with a new id). The
caller asks only after reading the head from the database under the thread's lease, so a thread another replica
moved on, a fork, or a rewind all miss and walk as before. Entries are values that the graph's reducers never
mutate (copy-on-write, graph/state.py). Bounded: least recently used threads go first, by an item budget.
"""

from __future__ import annotations

from collections import OrderedDict

DEFAULT_ITEMS = 20_000  # log entries kept across threads (REDRAFT_HEAD_CACHE_ITEMS): ~1 KB each, ~20 MB


def weight(values: dict) -> int:
    """About how many entries ``values`` holds: each log entry, and each text of the run log."""
    total = 0
    for value in values.values():
        if isinstance(value, list):
            total += len(value)
            if value and isinstance(value[0], dict) and "revision" in value[0]:  # the run log: its slots' texts
                total += sum(
                    [len(s.get("revision") or ()) + len(s.get("critique") or ()) for s in value if isinstance(s, dict)]
                )
    return total


class BudgetedCache:
    """Entries keyed by tuples that start with a thread id, each weighing some items: least recently used first out
    beyond ``max_items``, and an entry over a quarter of the budget is not kept (a very long thread: its walk is
    bounded anyway; keep room for others). Entries are (*payload, items)."""

    def __init__(self, max_items: int = DEFAULT_ITEMS) -> None:
        self.max_items = max_items
        self._entries: OrderedDict[tuple, tuple] = OrderedDict()
        self._items = 0

    def _store(self, key: tuple, payload: tuple, items: int) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._items -= old[-1]
        if items > self.max_items // 4:
            return
        self._entries[key] = (*payload, items)
        self._items += items
        while self._items > self.max_items:
            _, dropped = self._entries.popitem(last=False)
            self._items -= dropped[-1]

    def forget(self, *thread_ids: str) -> None:
        gone = set(thread_ids)
        for key in [k for k in self._entries if k[0] in gone]:
            self._items -= self._entries.pop(key)[-1]

    def __len__(self) -> int:
        return len(self._entries)


class HeadValues(BudgetedCache):
    """(thread, namespace) -> (checkpoint id, values at it), least recently used first out."""

    def remember(self, thread_id: str, checkpoint_ns: str, checkpoint_id: str, values: dict) -> None:
        self._store((thread_id, checkpoint_ns), (checkpoint_id, values), max(1, weight(values)))

    def histories(self, thread_id: str, checkpoint_ns: str, checkpoint_id: str, channels: list) -> dict | None:
        """Delta-channel histories at ``checkpoint_id`` (each channel's value as its seed, no writes to replay), or
        None when this process did not write that checkpoint last or lacks one of ``channels``."""
        key = (thread_id, checkpoint_ns)
        entry = self._entries.get(key)
        if entry is None or entry[0] != checkpoint_id:
            return None
        values = entry[1]
        if any(ch not in values for ch in channels):
            return None
        self._entries.move_to_end(key)
        return {ch: {"writes": [], "seed": values[ch]} for ch in channels}


class RemembersLastRun:
    """For a saver: ``heads`` (its ``HeadValues``) and ``remember_head``, which the runner calls at a run's end."""

    _heads: HeadValues | None = None

    @property
    def heads(self) -> HeadValues:
        if self._heads is None:
            self._heads = HeadValues()
        return self._heads

    def remember_head(self, config: dict, values: dict) -> None:
        """A run ended at the checkpoint ``config`` names with ``values`` (its stream's last checkpoint event)."""
        configurable = config.get("configurable") or {}
        if configurable.get("checkpoint_id") and isinstance(values, dict):
            ns = configurable.get("checkpoint_ns", "")
            self.heads.remember(configurable["thread_id"], ns, configurable["checkpoint_id"], values)
