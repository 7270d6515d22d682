"""Delta-channel snapshots this process has decoded, so a walk that starts from one again need not fetch and decode it.

Reading a delta channel (graph/pgsaver.py) starts from its last snapshot before the checkpoint (a blob written every
32 updates) and replays the writes after it. On a long thread the snapshot is the whole log: ~1,000 texts, usage
and score entries at ~1,000 checkpoints, ~0.1 MB compressed, ~1 ms to fetch, inflate and decode. A step whose
thread another replica moved on (so graph/headcache.py misses) still walks from the same snapshot as this process's
last walk did, as snapshots are 32 updates apart.

A snapshot blob never changes once written: its row is keyed by (thread, namespace, channel, version) and written
with ``ON CONFLICT DO NOTHING``, and a delete removes it. The walk still asks the database which snapshot it starts
from, in the same statement as the writes after it, and sends the size of the blob it holds: the database returns
the blob only when its size differs (a thread deleted and made again under the same id would need the same random
version suffix and the same size to collide). So this holds no truth
of its own. Entries are shared values that the channels' reducers never mutate (copy-on-write, graph/state.py), as
in graph/headcache.py. Bounded by the same kind of item budget, least recently used first out.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from redraft.graph.headcache import DEFAULT_ITEMS, weight

Key = tuple[str, str, str, str]  # thread, namespace, channel, version


class SeedValues:
    """(thread, namespace, channel, version) -> (the decoded snapshot, its blob's size), least recently used first
    out. The caller compares the size with the database's before it uses the snapshot."""

    def __init__(self, max_items: int = DEFAULT_ITEMS) -> None:
        self.max_items = max_items
        self._entries: OrderedDict[Key, tuple[Any, int, int]] = OrderedDict()
        self._items = 0

    def get(self, key: Key) -> tuple[Any, int] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0], entry[1]

    def put(self, key: Key, seed: Any, blob_size: int) -> None:
        items = 1 + weight({"seed": getattr(seed, "value", seed)})
        old = self._entries.pop(key, None)
        if old is not None:
            self._items -= old[2]
        if items > self.max_items // 4:  # a very long log: room for others
            return
        self._entries[key] = (seed, blob_size, items)
        self._items += items
        while self._items > self.max_items:
            _, (_, _, dropped) = self._entries.popitem(last=False)
            self._items -= dropped

    def forget(self, *thread_ids: str) -> None:
        gone = set(thread_ids)
        for key in [k for k in self._entries if k[0] in gone]:
            self._items -= self._entries.pop(key)[2]

    def __len__(self) -> int:
        return len(self._entries)
