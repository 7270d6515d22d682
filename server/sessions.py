"""Sessions: explicit ids minted by ``create_session`` and passed back as ``session_id: SessionId`` arguments.

A session lives in the ``redraft_sessions`` table beside the checkpoints, so any server process on the same database
can serve it; nothing about it is cached in a process. Its threads are one LangGraph thread per
(session, companion type). Sessions are owned by the authenticated principal (FastMCP's ``current_principal``):
another principal's id fails exactly like an unknown id. Without auth every caller is the ``anon`` principal and a
session id is a bearer capability (uuid4, unguessable).
"""

from __future__ import annotations

import hashlib
import time
import uuid

from fastmcp.server.sessions import current_principal

from redraft.errors import InvalidInputError, SessionNotFoundError
from redraft.graph.companions import COMPANION_MAP
from redraft.graph.database import Database
from redraft.graph.runner import thread_id_for


def principal_key() -> str:
    """A fixed-length key for the current request's principal ('anon' without auth)."""
    principal = current_principal()
    return "anon" if principal is None else hashlib.sha256(principal.encode("utf-8", "surrogatepass")).hexdigest()


def _valid_id(session_id: object) -> str:
    if not isinstance(session_id, str) or not session_id:
        raise SessionNotFoundError()
    try:
        return str(uuid.UUID(session_id))
    except ValueError:
        raise SessionNotFoundError() from None


class SessionStore:
    def __init__(self, db: Database, saver, ttl_seconds: float, max_sessions: int) -> None:
        self.db = db
        self.saver = saver
        self.ttl = ttl_seconds
        self.max_sessions = max_sessions

    async def create(self, principal: str) -> dict:
        session_id = str(uuid.uuid4())
        now = time.time()
        await self.db.execute(
            "INSERT INTO redraft_sessions (session_id, principal, created_at, last_accessed) VALUES (?, ?, ?, ?)",
            (session_id, principal, now, now),
        )
        if await self.count() > self.max_sessions:  # opportunistic sweep past the mark
            await self.sweep()
        return {"session_id": session_id, "created_at": now, "expires_after_idle_s": self.ttl}

    async def touch(self, principal: str, session_id: str) -> str:
        """Validate ownership and liveness, record the access, return the canonical id."""
        session_id = _valid_id(session_id)
        now = time.time()
        updated = await self.db.execute(
            "UPDATE redraft_sessions SET last_accessed = ? "
            "WHERE session_id = ? AND principal = ? AND last_accessed >= ?",
            (now, session_id, principal, now - self.ttl),
        )
        if updated != 1:
            raise SessionNotFoundError()
        return session_id

    async def touch_quietly(self, principal: str, session_id: object) -> None:
        """Record activity at the end of a call (a long refine must not leave its session looking idle)."""
        if isinstance(session_id, str):
            await self.db.execute(
                "UPDATE redraft_sessions SET last_accessed = ? WHERE session_id = ? AND principal = ?",
                (time.time(), session_id, principal),
            )

    async def end(self, principal: str, session_id: str) -> dict:
        session_id = _valid_id(session_id)
        row = await self.db.fetchone(
            "SELECT session_id FROM redraft_sessions WHERE session_id = ? AND principal = ?", (session_id, principal)
        )
        if row is None:
            raise SessionNotFoundError()
        deleted = await self._delete_threads(session_id)
        await self.db.execute("DELETE FROM redraft_sessions WHERE session_id = ?", (session_id,))
        return {"session_id": session_id, "ended": True, "threads_deleted": deleted}

    async def list(self, principal: str, limit: int = 100) -> list[dict]:
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidInputError("limit must be an integer from 1 to 1000.")
        rows = await self.db.fetchall(
            "SELECT session_id, created_at, last_accessed FROM redraft_sessions "
            "WHERE principal = ? AND last_accessed >= ? ORDER BY last_accessed DESC LIMIT ?",
            (principal, time.time() - self.ttl, limit),
        )
        return [{**row, "expires_at": row["last_accessed"] + self.ttl} for row in rows]

    async def count(self) -> int:
        row = await self.db.fetchone("SELECT count(*) AS n FROM redraft_sessions")
        return int(row["n"]) if row else 0

    async def sweep(self) -> int:
        """Delete every session idle past the TTL, with its threads and checkpoints. Safe to run from any process."""
        cutoff = time.time() - self.ttl
        expired = await self.db.fetchall("SELECT session_id FROM redraft_sessions WHERE last_accessed < ?", (cutoff,))
        busy = await self.db.busy_sessions() if expired else set()  # a step running means busy, not idle
        swept = 0
        for row in expired:
            if row["session_id"] in busy:
                continue
            # the row goes first, and only if still idle: a call racing the sweep either renews it or finds it gone
            gone = await self.db.execute(
                "DELETE FROM redraft_sessions WHERE session_id = ? AND last_accessed < ?", (row["session_id"], cutoff)
            )
            if gone == 1:
                await self._delete_threads(row["session_id"])
                swept += 1
        return swept

    async def _delete_threads(self, session_id: str) -> int:
        deleted = 0
        for companion in COMPANION_MAP:
            thread_id = thread_id_for(session_id, companion)
            if await self.saver.aget_tuple({"configurable": {"thread_id": thread_id}}) is not None:
                await self.saver.adelete_thread(thread_id)
                deleted += 1
        return deleted
