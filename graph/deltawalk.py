"""The walk that rebuilds a thread's delta channels at a checkpoint (PostgreSQL), mixed into graph/pgsaver.py's saver.

It is LangGraph's own two-stage walk (``AsyncPostgresSaver.aget_delta_channel_history``) with three changes that make
a read cost about the same at 1,000 checkpoints as at 10:

* stage 1 (the ancestors' channel versions, to find each channel's chain back to its last snapshot) starts with a
  page of about one snapshot interval instead of 1,024 rows, each with a blob probe per channel;
* stage 2 fetches a chain's writes by primary-key probes, one per checkpoint id, instead of a scan of every write
  row of the thread, and a pack (graph/pglayout.py) only where it holds a channel the walk reads;
* a snapshot this process decoded before is not sent again (graph/seedcache.py): the database returns a seed's
  blob only when its size is not the one of the copy held here.
"""

from __future__ import annotations

from langgraph.checkpoint.postgres.base import _build_delta_stage1_sql

from redraft.graph.pglayout import PACK_PREFIX, expand_stage2
from redraft.graph.seedcache import SeedValues
from redraft.observability import metrics

# Stage 2 of the delta walk: at each checkpoint of the channels' chains, the rows of the channels whose chain holds
# it, and the packs holding one of them (graph/pglayout.py: a pack's channel names them), one primary-key probe per
# checkpoint id (the OFFSET 0 keeps the planner from flattening the lateral subquery into a join). The stock form
# (``checkpoint_id = ANY(%s)``, per channel) let the planner scan and hash every write row of the thread, ~4,000 rows
# at 1,000 checkpoints, where a chain holds ~30 ids.
_DELTA_WRITES = """SELECT 'w'::text AS _kind, w.checkpoint_id, w.channel, w.type, w.blob, w.task_id, w.task_path, w.idx,
    NULL::text AS version, NULL::int AS size
FROM (SELECT id, array_agg(ch) AS chs FROM unnest(%s::text[], %s::text[]) AS p(id, ch) GROUP BY id) AS c
CROSS JOIN LATERAL (
    SELECT * FROM checkpoint_writes
    WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = c.id AND (channel = ANY(c.chs)
        OR (starts_with(channel, %s) AND string_to_array(substr(channel, %s), ',') && c.chs))
    OFFSET 0
) AS w"""

# A seed's blob comes back only when its size and type are not those of the decoded copy this process holds
# (graph/seedcache.py; -1 and '' when it holds none): a stored bytea's size is read from its header, without fetching
# a TOASTed value.
_DELTA_SEED = """SELECT 'b'::text AS _kind, NULL::text AS checkpoint_id, channel, type,
    CASE WHEN octet_length(blob) = %s AND type = %s THEN NULL ELSE blob END AS blob, NULL::text AS task_id,
    NULL::text AS task_path, NULL::int AS idx, version, octet_length(blob) AS size
FROM checkpoint_blobs WHERE thread_id = %s AND checkpoint_ns = %s AND channel = %s AND version = %s"""


class DeltaWalk:
    """Mixed in before ``AsyncPostgresSaver``: ``_delta_history`` and the decoded snapshots it keeps, ``seeds``."""

    # First page of the ancestor walk: every delta channel snapshots at least every SNAPSHOT_SUPERSTEPS (32)
    # supersteps (graph/checkpointer.py), one checkpoint row each, so one page almost always finds every seed.
    delta_first_page = 48
    delta_max_page = 1024
    _seeds: SeedValues | None = None

    @property
    def seeds(self) -> SeedValues:
        """Delta-channel snapshots this process decoded (graph/seedcache.py)."""
        if self._seeds is None:
            self._seeds = SeedValues()
        return self._seeds

    async def _delta_history(self, thread_id: str, checkpoint_ns: str, checkpoint_id: str, channels: list) -> dict:
        parent_of: dict = {}
        versions: list[dict] = [{} for _ in channels]
        has_blob: list[dict] = [{} for _ in channels]
        inline: list[dict] = [{} for _ in channels]
        chain: dict[str, list[str]] = {ch: [] for ch in channels}
        seed_version: dict = dict.fromkeys(channels)
        seed_inline: dict = {}
        walk: dict = {}
        seeded: set[str] = set()
        cursor, page_size, first = checkpoint_id, self.delta_first_page, True
        async with self._cursor() as cur:
            while True:
                sql = _build_delta_stage1_sql(channels, paged=True, include_cursor=first)
                params = [ch for ch in channels for _ in range(4)] + [thread_id, checkpoint_ns, cursor, page_size]
                await cur.execute(sql, params)
                page = await cur.fetchall()
                if not page:
                    break
                oldest = self._ingest_stage1_page(page, channels, parent_of, versions, has_blob, inline)
                self._try_advance_walks(
                    checkpoint_id, channels, parent_of, versions, has_blob, inline, chain, seed_version,
                    seed_inline, walk, seeded,
                )  # fmt: skip
                if len(seeded) == len(channels) or len(page) < page_size:
                    break
                cursor, first, page_size = oldest, False, min(page_size * 4, self.delta_max_page)
            pairs = [(cid, ch) for ch in channels for cid in chain[ch]]
            with_seed = [ch for ch in channels if seed_version[ch] is not None]
            held = {ch: self.seeds.get((thread_id, checkpoint_ns, ch, seed_version[ch])) for ch in with_seed}
            rows = []
            if pairs or with_seed:
                sql = " UNION ALL ".join([_DELTA_WRITES] * bool(pairs) + [_DELTA_SEED] * len(with_seed))
                params = [*map(list, zip(*pairs, strict=True)), thread_id, checkpoint_ns] if pairs else []
                params += [PACK_PREFIX, len(PACK_PREFIX) + 1] if pairs else []
                for ch in with_seed:
                    size, type_ = held[ch][1:] if held[ch] is not None else (-1, "")
                    params += [size, type_, thread_id, checkpoint_ns, ch, seed_version[ch]]
                await cur.execute(sql, params)
                rows = expand_stage2(await cur.fetchall(), channels)
        return self._with_seeds(thread_id, checkpoint_ns, channels, chain, seed_version, seed_inline, rows, held)

    def _with_seeds(self, thread_id, checkpoint_ns, channels, chain, seed_version, seed_inline, rows, held) -> dict:
        """The histories from stage 2's rows, each seed from the copy this process holds when the database sent no
        blob for it (the same size), else decoded and kept (graph/seedcache.py)."""
        reused = {}
        for r in rows:
            if r["_kind"] == "b" and r["blob"] is None and r["type"] != "empty" and held.get(r["channel"]):
                if (r["size"], r["type"]) == held[r["channel"]][1:]:
                    reused[r["channel"]] = held[r["channel"]][0]
        if reused:
            rows = [r for r in rows if not (r["_kind"] == "b" and r["channel"] in reused)]
            seed_version = {ch: None if ch in reused else v for ch, v in seed_version.items()}
        history = self._build_delta_channels_writes_history(
            channels=channels,
            chain_by_ch=chain,
            seed_ver_by_ch=seed_version,
            seed_inline_by_ch=seed_inline,
            stage2_rows=rows,
        )
        for ch, seed in reused.items():
            history[ch]["seed"] = seed
        fetched = [r for r in rows if r["_kind"] == "b" and r["blob"] is not None]
        metrics.snapshot_reads(len(reused), len(fetched))
        for r in fetched:
            if "seed" in history.get(r["channel"], {}):
                key = (thread_id, checkpoint_ns, r["channel"], r["version"])
                self.seeds.put(key, history[r["channel"]]["seed"], r["size"], r["type"])
        return history
