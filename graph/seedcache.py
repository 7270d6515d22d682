"""Delta-channel snapshots this process has decoded, so a walk that starts from one again need not fetch and decode it.

Reading a delta channel (graph/pgsaver.py) starts from its last snapshot before the checkpoint (a blob written every
32 updates) and replays the writes after it. On a long thread the snapshot is the whole log: ~1,000 texts, usage
and score entries at ~1,000 checkpoints, ~0.1 MB compressed, ~1 ms to fetch, inflate and decode. A step whose
thread another replica moved on (so graph/headcache.py misses) still walks from the same snapshot as this process's
last walk did, as snapshots are 32 updates apart.

A snapshot blob never changes once written: its row is keyed by (thread, namespace, channel, version) and written
with ``ON CONFLICT DO NOTHING``, and a delete removes it. The walk still asks the database which snapshot it starts
from, in the same statement as the writes after it, and sends the size of the blob it holds: the database returns
the blob only when its size differs, and the walk checks the type too (a thread deleted and made again under the
same id would need the same random version suffix, size and type to collide). So this holds no truth
of its own. Entries are shared values that the channels' reducers never mutate (copy-on-write, graph/state.py), as
in graph/headcache.py. Bounded by the same kind of item budget, least recently used first out.
"""

from __future__ import annotations

from typing import Any

from redraft.graph.headcache import BudgetedCache, weight

Key = tuple[str, str, str, str]  # thread, namespace, channel, version


class SeedValues(BudgetedCache):
    """(thread, namespace, channel, version) -> (the decoded snapshot, its blob's size and serde type), least
    recently used first out. The caller compares size and type with the database's before it uses the snapshot."""

    def get(self, key: Key) -> tuple[Any, int, str] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0], entry[1], entry[2]

    def put(self, key: Key, seed: Any, blob_size: int, blob_type: str) -> None:
        self._store(key, (seed, blob_size, blob_type), 1 + weight({"seed": getattr(seed, "value", seed)}))
