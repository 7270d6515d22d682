"""What the server's middleware does after each advancing MCP call, done for the CLI's runs too: one session
lifecycle and one set of learning stats, whichever way a thread was advanced.

After ``redraft run`` or ``redraft resume``, the session's activity is recorded (a long run must not look idle to a
sweep, as ``SessionActivityMiddleware`` ensures for MCP calls) and the learning stats learn from the call (as
``LearningMiddleware`` does). Neither may fail a run that succeeded: a failure is logged. Expired sessions are
swept at the end of every command (``engine`` in ``server/cli/app.py``).
"""

from __future__ import annotations

import logging
from typing import Any

from redraft.server.cli.app import CLI_PRINCIPAL

log = logging.getLogger("redraft.cli")


async def call_done(
    runner: Any, sessions: Any, session_id: str, companion: str, name: str, result: dict, elapsed: float, full_run: bool
) -> list[dict]:
    """Record the session's activity and the learning stats; return the run's anomalies (graph/anomalies.py)."""
    from redraft.server.stats import StatsStore

    try:
        await sessions.touch_quietly(CLI_PRINCIPAL, session_id)
    except Exception:
        log.debug("could not record the session's activity", exc_info=True)
    return await StatsStore(runner.persistence.db).record_quietly(companion, name, result, elapsed, full_run)
