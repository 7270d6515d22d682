"""Resource templates over a thread's current slot. Missing data is an MCP error, never a placeholder value:
-32002 (resource not found) for a missing thing, session or companion, -32602 for invalid input."""

from __future__ import annotations

import json

from fastmcp import FastMCP
from fastmcp.exceptions import ResourceError

from redraft.errors import NotFoundError
from redraft.graph.companions import get_companion
from redraft.graph.convergence import analyse_async
from redraft.graph.convergence import report as convergence_report
from redraft.graph.state import versions
from redraft.server.middleware import guard

BASE = "redraft://sessions/{session_id}/{companion}"


def analyse_report(text_report: dict, critic: dict, min_score: float | None) -> dict:
    """The recomputed text-similarity report with the critic's scores beside each version."""
    sims = [p["similarity"] for p in text_report["similarities"]]
    return convergence_report(sims, text_report["versions"], text_report["threshold"], critic, min_score)


def register_resources(mcp: FastMCP, app) -> None:
    async def current(session_id: str, companion: str) -> tuple[dict, dict]:
        thread = await app.thread(session_id, companion)
        status = await app.runner.status(thread)
        if status["slot"] is None:
            raise NotFoundError("This thread has no query yet.")
        return status, status["slot"]

    @mcp.resource(f"{BASE}/latest_critique", mime_type="text/plain")
    @guard(ResourceError)
    async def latest_critique(session_id: str, companion: str) -> str:
        """The most recent critique of the current query."""
        _, slot = await current(session_id, companion)
        if not slot["critique"]:
            raise NotFoundError("The current query has no critique yet.")
        return slot["critique"][-1]

    @mcp.resource(f"{BASE}/penultimate_revision", mime_type="text/plain")
    @guard(ResourceError)
    async def penultimate_revision(session_id: str, companion: str) -> str:
        """The revision before the latest one (what the last revision changed)."""
        _, slot = await current(session_id, companion)
        if len(slot["revision"]) < 2:
            raise NotFoundError(f"The current query has {len(slot['revision'])} revision(s); this needs at least 2.")
        return slot["revision"][-2]

    @mcp.resource(f"{BASE}/convergence", mime_type="application/json")
    @guard(ResourceError)
    async def convergence(session_id: str, companion: str) -> str:
        """Similarities between consecutive versions (computed from the texts), the threshold and whether it
        converged; beside them the critic's score of each version (structured critiques), min_score, the
        similarities stored when each revision was made (embedding ones, when REDRAFT_SIMILARITY=embedding) and the
        best version."""
        status, slot = await current(session_id, companion)
        vs = versions(slot)
        if not vs:
            raise NotFoundError("The current query has no draft yet.")
        run_config = status["run_config"]
        report = await analyse_async(vs, run_config["similarity_threshold"])
        stored = status["convergence"] or {}
        critic = {s["version"]: s["score"] for s in stored.get("scores") or []}
        scored = analyse_report(report, critic, run_config.get("min_score"))
        scored.update(
            stop_reason=status["stop_reason"],
            max_loops=run_config["max_loops"],
            best_version=status["best_version"],
            stored_similarities=[p["similarity"] for p in stored.get("similarities") or []],
        )
        return json.dumps(scored)

    @mcp.resource("redraft://stats/{companion}", mime_type="application/json")
    @guard(ResourceError)
    async def stats(companion: str) -> str:
        """What redraft has learned about a companion type across all sessions and server processes: runs, stop
        reasons, typical iterations, recommended threshold, estimated completion time, step times."""
        get_companion(companion, app.settings.companions)
        return json.dumps(await app.stats.summary(companion))

    @mcp.resource(f"{BASE}/run_log", mime_type="application/json")
    @guard(ResourceError)
    async def run_log(session_id: str, companion: str) -> str:
        """The whole run_log of the thread: one slot per query."""
        thread = await app.thread(session_id, companion)
        state = (await app.runner.snapshot(thread)).values
        if not state.get("run_log"):
            raise NotFoundError("This thread has no query yet.")
        return json.dumps(state["run_log"])
