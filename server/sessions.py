"""Sessions: explicit ids minted by ``create_session`` and passed back as ``session_id: SessionId`` arguments.

A session lives in the ``redraft_sessions`` table beside the checkpoints, so any server process on the same database
can serve it; nothing about it is cached in a process. Its threads are one LangGraph thread per
(session, companion type). Sessions are owned by the authenticated principal (FastMCP's ``current_principal``):
another principal's id fails exactly like an unknown id. Without auth every caller is the ``anon`` principal and a
session id is a bearer capability (uuid4, unguessable): over HTTP, ``list_sessions`` then shows only the sessions
the caller names (``may_list_all``). ``max_sessions`` caps the table: at the cap ``create`` fails with
``session_limit`` (retryable) once expired sessions have been swept.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import uuid

from redraft.errors import InvalidInputError, SessionBusyError, SessionLimitError, SessionNotFoundError
from redraft.graph.database import Database, SessionCheck
from redraft.graph.retention import remove_session

log = logging.getLogger("redraft.sessions")


def principal_key() -> str:
    """A fixed-length key for the current request's principal ('anon' without auth)."""
    from fastmcp.server.sessions import current_principal  # here, not on top: `redraft run` never loads FastMCP

    principal = current_principal()
    return "anon" if principal is None else hashlib.sha256(principal.encode("utf-8", "surrogatepass")).hexdigest()


def _canonical(session_id: object) -> str | None:
    """The canonical form of a session id, or None if it cannot be one."""
    if not isinstance(session_id, str) or not session_id:
        return None
    try:
        return str(uuid.UUID(session_id))
    except ValueError:
        return None


def _valid_id(session_id: object) -> str:
    canonical = _canonical(session_id)
    if canonical is None:
        raise SessionNotFoundError()
    return canonical


def may_list_all() -> bool:
    """Whether the caller may list every session of its principal. An authenticated principal may, and so may a
    local caller (stdio, the CLI, an in-process client: one user). An unauthenticated HTTP caller may not: every
    such caller is the same ``anon`` principal, so the listing would hand it every other client's ids; it sees
    only the sessions it names."""
    from fastmcp.server.dependencies import get_http_request
    from fastmcp.server.sessions import current_principal

    if current_principal() is not None:
        return True
    try:
        get_http_request()
    except RuntimeError:
        return True
    return False


class SessionStore:
    def __init__(self, db: Database, saver, ttl_seconds: float, max_sessions: int) -> None:
        self.db = db
        self.saver = saver
        self.ttl = ttl_seconds
        self.max_sessions = max_sessions

    async def create(self, principal: str) -> dict:
        """A new session, while the table holds fewer than ``max_sessions`` rows. At the cap, expired sessions are
        swept first; if every row is still live, ``SessionLimitError`` says when the oldest idle one expires."""
        session_id = str(uuid.uuid4())
        now = time.time()
        if not await self._insert_below_cap(session_id, principal, now):
            await self.sweep()
            now = time.time()
            if not await self._insert_below_cap(session_id, principal, now):
                raise SessionLimitError(await self._limit_message(now))
        return {"session_id": session_id, "created_at": now, "expires_after_idle_s": self.ttl}

    async def _insert_below_cap(self, session_id: str, principal: str, now: float) -> bool:
        # serialised (an advisory lock on PostgreSQL), so racing creates on any replicas never pass the cap
        return (
            await self.db.execute_serialised(
                "INSERT INTO redraft_sessions (session_id, principal, created_at, last_accessed) "
                "SELECT ?, ?, ?, ? WHERE (SELECT count(*) FROM redraft_sessions) < ?",
                (session_id, principal, now, now, self.max_sessions),
            )
            == 1
        )

    async def _limit_message(self, now: float) -> str:
        row = await self.db.fetchone("SELECT min(last_accessed) AS oldest FROM redraft_sessions")
        oldest = row["oldest"] if row and row["oldest"] is not None else now
        wait = max(1, math.ceil(oldest + self.ttl - now))
        return (
            f"All {self.max_sessions} sessions are live (REDRAFT_MAX_SESSIONS). Retry in about {wait} s, when the "
            "oldest idle session expires, or end a session you no longer need."
        )

    @property
    def touch_every(self) -> float:
        """``last_accessed`` is rewritten at most this often (a 30th of the TTL, at most a minute): a session then
        expires up to that much earlier than its exact idle time, and most calls make no write."""
        return min(60.0, self.ttl / 30)

    def check(self, principal: str, session_id: str) -> SessionCheck:
        """What ``touch`` checks, to run later (``SESSION_CHECK``: in a step's lease grant); SessionNotFoundError
        now for an id that cannot be a session's."""
        return SessionCheck(principal, _valid_id(session_id), self.ttl, self.touch_every)

    async def touch(self, principal: str, session_id: str) -> str:
        """Validate ownership and liveness, record the access, return the canonical id."""
        check = self.check(principal, session_id)
        await self.db.touch_session(check)
        return check.session_id

    async def touch_quietly(self, principal: str, session_id: object) -> None:
        """Record activity at the end of a call (a long refine must not leave its session looking idle)."""
        if isinstance(session_id, str):
            await self.db.execute(
                "UPDATE redraft_sessions SET last_accessed = ? WHERE session_id = ? AND principal = ?",
                (time.time(), session_id, principal),
            )

    async def end(self, principal: str, session_id: str) -> dict:
        """Delete the session with all its threads and checkpoints, atomically with respect to steps: refused with
        ``session_busy`` (and nothing changed) while a step runs on any of its threads; once it goes ahead, no step
        can start on them again (their leases are retired), so no row is left behind."""
        session_id = _valid_id(session_id)
        row = await self.db.fetchone(
            "SELECT session_id FROM redraft_sessions WHERE session_id = ? AND principal = ?", (session_id, principal)
        )
        if row is None:
            raise SessionNotFoundError()
        deleted = await remove_session(self.db, self.saver, session_id)
        if deleted is None:
            raise SessionBusyError("A step is running in this session; retry when it has finished.")
        return {"session_id": session_id, "ended": True, "threads_deleted": deleted}

    async def list(self, principal: str, limit: int = 100, session_ids: list[str] | None = None) -> list[dict]:
        """The principal's live sessions, most recently used first; only those among ``session_ids`` when given."""
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidInputError("limit must be an integer from 1 to 1000.")
        sql = (
            "SELECT session_id, created_at, last_accessed FROM redraft_sessions "
            "WHERE principal = ? AND last_accessed >= ?"
        )
        params: tuple = (principal, time.time() - self.ttl)
        if session_ids is not None:
            if not isinstance(session_ids, list) or len(session_ids) > 1000:
                raise InvalidInputError("session_ids must be a list of at most 1000 session ids.")
            wanted = sorted({sid for sid in map(_canonical, session_ids) if sid is not None})
            if not wanted:
                return []
            sql += f" AND session_id IN ({', '.join('?' * len(wanted))})"
            params += tuple(wanted)
        rows = await self.db.fetchall(sql + " ORDER BY last_accessed DESC LIMIT ?", (*params, limit))
        return [{**row, "expires_at": row["last_accessed"] + self.ttl} for row in rows]

    async def visible(self, principal: str, limit: int = 100, session_ids: list[str] | None = None) -> list[dict]:
        """``list_sessions``: the caller's live sessions, or the live ones among ``session_ids``. A caller that may
        not list everything (``may_list_all``) must name the sessions it asks about."""
        if session_ids is None and not may_list_all():
            raise InvalidInputError(
                "Over HTTP without authentication every client is the same anonymous caller, so list_sessions reports "
                "only the sessions you name: pass session_ids. With auth, each principal lists its own sessions."
            )
        return await self.list(principal, limit, session_ids)

    async def sweep(self, limit: int | None = None) -> int:
        """Delete every session idle past the TTL (the ``limit`` idlest, if given), with its threads and
        checkpoints. Safe to run from any process: the server runs it periodically, every CLI command at its end."""
        cutoff = time.time() - self.ttl
        sql = "SELECT session_id FROM redraft_sessions WHERE last_accessed < ?"
        if limit is not None:
            sql += f" ORDER BY last_accessed LIMIT {int(limit)}"
        expired = await self.db.fetchall(sql, (cutoff,))
        swept = 0
        for row in expired:
            # skipped while a step runs on one of its threads (busy, not idle), or if a call renewed it meanwhile
            if await remove_session(self.db, self.saver, row["session_id"], idle_before=cutoff) is not None:
                swept += 1
        await self.db.forget_tombstones()
        return swept

    async def sweep_quietly(self, limit: int) -> int:
        """``sweep`` for a caller whose own work is done (a CLI command): a failure is logged, not raised."""
        try:
            return await self.sweep(limit)
        except Exception:
            log.debug("session sweep failed", exc_info=True)
            return 0
