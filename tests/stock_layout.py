"""A copy of a thread in the stock ``AsyncPostgresSaver`` layout, for differential tests of graph/pglayout.py.

Every pack becomes the rows it holds, and every checkpoint row gets its ``id`` and its metadata counters back, as
the stock saver writes them; the copy keeps the checkpoint ids, so the two threads can be compared checkpoint by
checkpoint, and the stock saver's own reads work on the copy."""

from __future__ import annotations

from psycopg.types.json import Jsonb

from redraft.graph.pglayout import PACK_PREFIX, full_checkpoint, full_metadata, unpack


def stock_copy(conn, source: str, target: str) -> int:
    """Copy thread ``source`` to ``target`` (a sync psycopg connection); returns how many write rows it wrote."""
    for ns, cid, parent, checkpoint, metadata in conn.execute(
        "SELECT checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, metadata FROM checkpoints "
        "WHERE thread_id = %s",
        (source,),
    ).fetchall():
        conn.execute(
            "INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, "
            "metadata) VALUES (%s, %s, %s, %s, %s, %s)",
            (target, ns, cid, parent, Jsonb(full_checkpoint(checkpoint, cid)), Jsonb(full_metadata(metadata))),
        )
    conn.execute(
        "INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob) "
        "SELECT %s, checkpoint_ns, channel, version, type, blob FROM checkpoint_blobs WHERE thread_id = %s",
        (target, source),
    )
    written = 0
    for ns, cid, task, path, idx, channel, type_, blob in conn.execute(
        "SELECT checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob FROM checkpoint_writes "
        "WHERE thread_id = %s",
        (source,),
    ).fetchall():
        stored = list(unpack(blob)) if channel.startswith(PACK_PREFIX) else [(idx, channel, type_, blob)]
        for i, ch, t, b in stored:
            written += conn.execute(
                "INSERT INTO checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, "
                "channel, type, blob) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (target, ns, cid, task, path, i, ch, t, b),
            ).rowcount
    return written
