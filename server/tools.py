"""MCP tools: sessions, the three steps, refine (with progress), resume and status.

No ``from __future__ import annotations`` here: the free-text argument types are built from the settings when the
tools are registered, so the annotations must be evaluated then.
"""

from typing import Annotated

from fastmcp import Context, FastMCP
from fastmcp.server.sessions import SessionId
from pydantic import Field

from redraft.graph.anomalies import anomalies, figures
from redraft.graph.companions import COMPANION_MAP, get_companion, role_models
from redraft.graph.runner import thread_id_for
from redraft.server.middleware import ArgumentErrors, guard
from redraft.server.models import (
    CompanionInfo,
    CompanionList,
    Sampling,
    SessionEnded,
    SessionInfo,
    SessionList,
    SessionSummary,
    ThreadView,
    decision_type,
)
from redraft.server.sessions import principal_key
from redraft.server.stats import model_of
from redraft.server.task_gates import answer_parked, parked_run
from redraft.server.tasks import TASK, ending, run_task, task_id_of, task_thread
from redraft.server.validation import ID_CHARS, text
from redraft.settings import mask_url

CompanionName = text(ID_CHARS, f"Companion type: one of {', '.join(COMPANION_MAP)}.")
Threshold = Annotated[
    float | None, Field(ge=0.0, le=1.0, description="Stop when consecutive versions are this similar.")
]
MaxLoops = Annotated[int | None, Field(ge=1, le=1000, description="At most this many critique/revise loops.")]
MinScore = Annotated[
    float | None,
    Field(ge=0.0, le=10.0, description="Stop once the critic scores a version at least this (0-10; default off)."),
]


MaxTokensPerRun = Annotated[
    int | None,
    Field(ge=1, description="Budget: stop the run (stop_reason budget) once its model calls used this many tokens."),
]
MaxCostPerRun = Annotated[
    float | None,
    Field(gt=0, description="Budget in USD: stop the run (stop_reason budget) once its model calls cost this much."),
]


def _budgets(max_tokens_per_run: int | None, max_cost_per_run: float | None) -> dict:
    given = {"max_tokens_per_run": max_tokens_per_run, "max_cost_per_run": max_cost_per_run}
    return {k: v for k, v in given.items() if v is not None}


def view(session_id: str, companion: str, data: dict, stats: dict | None = None) -> ThreadView:
    data = {k: v for k, v in data.items() if k != "thread_id"}
    result = ThreadView(session_id=session_id, companion=companion, **data)
    if stats is not None:
        result.suggestions = {"runs": stats["runs"], **(stats["suggestions"] or {"note": stats.get("note")})}
        if data.get("duration_s") is not None and data.get("phase") == "done":  # a run (refine) that finished
            result.anomalies = anomalies(figures(data, data["duration_s"]), stats, model_of(data))
    return result


def progress_reporter(ctx: Context):
    """An on_step callback that sends one MCP progress notification per finished step (with the run's maximum
    step count as the total when the runner knows it)."""
    done = 0

    async def on_step(event: dict) -> None:
        nonlocal done
        done += 1
        total = event.get("total")
        await ctx.report_progress(min(done, total) if total else done, total, f"{event['node']} finished")

    return on_step


def _options(similarity_threshold, max_loops, sampling: Sampling | None, min_score: float | None = None) -> dict:
    options: dict = {"similarity_threshold": similarity_threshold, "max_loops": max_loops}
    if min_score is not None:
        options["min_score"] = min_score
    if sampling is not None:
        options["sampling"] = sampling.model_dump(exclude_none=True)
    return options


def register_tools(mcp: FastMCP, app) -> None:
    mcp.add_middleware(ArgumentErrors())
    query_chars, text_chars = app.settings.max_query_chars, app.settings.max_text_chars
    Query = text(query_chars, "The request to answer.")
    NewQuery = text(query_chars, "Start this new query; omit to continue the current one.", optional=True)
    OptText = text(text_chars, "Supply the text yourself instead of asking the model.", optional=True)
    EditedCritique = text(text_chars, "Correct the pending critique before revising.", optional=True)
    Decision = decision_type(text_chars)

    @mcp.tool(annotations={"idempotentHint": False})
    @guard()
    async def create_session() -> SessionInfo:
        """Create a session and pass its session_id to every other tool. Idle sessions expire
        (see expires_after_idle_s)."""
        return SessionInfo(**await app.sessions.create(principal_key()))

    @mcp.tool(annotations={"destructiveHint": True})
    @guard()
    async def end_session(session_id: SessionId) -> SessionEnded:
        """End a session and delete all of its threads and checkpoints."""
        return SessionEnded(**await app.sessions.end(principal_key(), session_id))

    @mcp.tool(annotations={"readOnlyHint": True})
    @guard()
    async def list_sessions(
        limit: Annotated[int, Field(ge=1, le=1000)] = 100,
        session_ids: Annotated[
            list[Annotated[str, Field(max_length=64)]] | None,
            Field(max_length=1000, description="Only these sessions: the live ones among them."),
        ] = None,
    ) -> SessionList:
        """Your live sessions, most recently used first. Over HTTP without auth every client is the same anonymous
        caller, so only the sessions you name in session_ids are reported."""
        rows = await app.sessions.visible(principal_key(), limit, session_ids)
        return SessionList(sessions=[SessionSummary(**row) for row in rows])

    @mcp.tool(annotations={"readOnlyHint": True})
    @guard()
    async def companions() -> CompanionList:
        """The companion types and their defaults (model, temperature, threshold, max_loops, history, mode)."""
        roles = role_models(app.settings)
        default_url = mask_url(app.settings.base_url) if app.settings.base_url else None
        shown = {
            name: {
                role: {
                    **{k: v for k, v in chosen.items() if k != "base_url"},
                    "own_endpoint": chosen["base_url"] != default_url,
                }
                for role, chosen in by_role.items()
            }
            for name, by_role in roles.items()
        }
        return CompanionList(
            companions=[
                CompanionInfo(**get_companion(name, app.settings.companions).public(), roles=shown[name])
                for name in COMPANION_MAP
            ]
        )

    @mcp.tool
    @guard()
    async def draft(
        session_id: SessionId,
        query: Query,
        companion: CompanionName = "generic",
        similarity_threshold: Threshold = None,
        max_loops: MaxLoops = None,
        sampling: Sampling | None = None,
        min_score: MinScore = None,
        max_tokens_per_run: MaxTokensPerRun = None,
        max_cost_per_run: MaxCostPerRun = None,
    ) -> ThreadView:
        """Start a new query on the companion's thread: adds a run_log slot and writes the draft. Refuses if the
        thread's current query is unfinished."""
        options = _options(similarity_threshold, max_loops, sampling, min_score)
        options.update(_budgets(max_tokens_per_run, max_cost_per_run))
        with app.stepping(session_id, companion) as thread:
            return view(session_id, companion, await app.runner.draft(thread, companion, query, **options))

    @mcp.tool
    @guard()
    async def critique(session_id: SessionId, companion: CompanionName = "generic", text: OptText = None) -> ThreadView:
        """Critique the current version (by the model, or pass your own `text`). Needs phase ready_to_critique."""
        with app.stepping(session_id, companion) as thread:
            return view(session_id, companion, await app.runner.critique(thread, text))

    @mcp.tool
    @guard()
    async def revise(
        session_id: SessionId,
        companion: CompanionName = "generic",
        text: OptText = None,
        critique: EditedCritique = None,
    ) -> ThreadView:
        """Revise the current version using the pending critique. Needs phase needs_revision."""
        with app.stepping(session_id, companion) as thread:
            return view(session_id, companion, await app.runner.revise(thread, text, critique))

    @mcp.tool(task=TASK)
    @guard()
    async def refine(
        ctx: Context,
        session_id: SessionId,
        companion: CompanionName = "generic",
        query: NewQuery = None,
        similarity_threshold: Threshold = None,
        max_loops: MaxLoops = None,
        sampling: Sampling | None = None,
        min_score: MinScore = None,
        max_tokens_per_run: MaxTokensPerRun = None,
        max_cost_per_run: MaxCostPerRun = None,
    ) -> ThreadView:
        """Run draft -> critique -> revise until the critic is satisfied (or scores a version at least min_score),
        consecutive versions converge, or max_loops is reached. Sends a progress notification after every step. In
        `step` mode it stops at each human gate: answer with `resume`. As an MCP background task it returns a task
        id at once; progress is the task's status message and a gate is the task state input_required;
        `run_status(task_id)` shows the same run."""
        options = _options(similarity_threshold, max_loops, sampling, min_score) if query is not None else {}
        if query is not None:  # budgets, like the other settings, belong to the query the run opens
            options.update(_budgets(max_tokens_per_run, max_cost_per_run))
        if task_id_of(ctx):  # a background task: its run record, progress as status messages, gates as input_required
            thread = await task_thread(app, ctx, session_id, companion)

            async def show(result: dict) -> ThreadView:
                return view(session_id, companion, result, await app.stats.summary(companion, transitions=False))

            request = {"query": query, "options": options}
            return await run_task(
                app,
                ctx,
                kind="refine",
                session_id=session_id,
                companion=companion,
                thread=thread,
                request=request,
                show=show,
            )
        thread = await app.thread(session_id, companion)
        result = await app.runner.refine(thread, companion, query, on_step=progress_reporter(ctx), **options)
        return view(session_id, companion, result, await app.stats.summary(companion, transitions=False))

    @mcp.tool(task=TASK)
    @guard()
    async def resume(
        ctx: Context,
        session_id: SessionId,
        companion: CompanionName = "generic",
        decision: Annotated[
            Decision | None, Field(description="Answer to the thread's `pending_gate`: that step runs with it.")
        ] = None,
    ) -> ThreadView:
        """Continue a thread stopped by a crash, an error or a step-mode gate, from its last checkpoint. Completed
        steps are never repeated. If a background run (start_refine, or an MCP task in input_required) waits at the
        gate, the decision resumes that same run, to its next stop."""
        thread = await app.thread(session_id, companion)
        payload = decision.model_dump(exclude_none=True) if decision else None
        parked = await parked_run(app, thread)
        if parked is not None:  # a background run waits at a gate: this decision resumes that same run (to its next
            # stop; a next gate is shown in the view, as a blocking resume shows it)
            result = ending(await answer_parked(app, ctx.fastmcp, parked, payload), in_task=False)
        elif task_id_of(ctx):

            async def show(result: dict) -> ThreadView:
                return view(session_id, companion, result)

            request = {"decision": payload}
            return await run_task(
                app,
                ctx,
                kind="resume",
                session_id=session_id,
                companion=companion,
                thread=thread,
                request=request,
                show=show,
            )
        else:
            result = await app.runner.resume(thread, payload, on_step=progress_reporter(ctx))
        return view(session_id, companion, result)

    @mcp.tool(annotations={"readOnlyHint": True})
    @guard()
    async def status(session_id: SessionId, companion: CompanionName = "generic") -> ThreadView:
        """The thread's phase, current slot, similarities, stop reason and final text."""
        thread = await app.thread(session_id, companion)
        return view(
            session_id,
            companion,
            await app.runner.status(thread),
            await app.stats.summary(companion, transitions=False),
        )


__all__ = ["register_tools", "thread_id_for", "view"]
