"""``redraft run``: refine a query to convergence, streaming each step.

A run that fails or is interrupted (Ctrl-C, SIGINT) says once, on stderr, which session it was in and the exact
command that continues it: every finished step is checkpointed, so ``redraft resume`` picks up at the step that did
not finish. SIGINT cancels the step in flight (even mid model call); the process exits 130 once the thread's lease
is released and the database closed, well within a second.
"""

from __future__ import annotations

import shlex
import time
from typing import Annotated, Any

import typer

from redraft.server.cli.app import (
    CLI_PRINCIPAL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CompanionOption,
    DbOption,
    JsonOption,
    app,
    cli_overrides,
    emit,
    engine,
    exit_code_for,
    masked,
    out,
    report_error,
    show_thread,
    touch_session,
)


def resume_command(session_id: str, companion: str) -> str:
    """The command that continues this session's thread (secrets in a --database-url given here masked)."""
    words = ["redraft", "resume", session_id]
    if companion != "generic":
        words += ["--companion", companion]
    if "database_url" in cli_overrides:
        words += ["--database-url", masked(cli_overrides["database_url"])]
    return shlex.join(words)


def stopped(code: str, message: str, exit_code: int, session_id: str | None, companion: str) -> typer.Exit:
    """Report a run that did not finish: the error and, if its thread holds anything, how to continue it."""
    from redraft.errors import ContextOverflowError

    details: dict[str, Any] = {}
    lines: tuple[str, ...] = ()
    if session_id is not None and exit_code != EXIT_USAGE:
        details["session_id"] = session_id
        if code == ContextOverflowError.code:  # resuming would repeat the refusal: the message says what to do
            lines = (f"session {session_id}",)
        else:
            command = resume_command(session_id, companion)
            details["resume_command"] = command
            lines = (f"session {session_id} is saved; continue it with: {command}",)
    report_error(code, message, details, lines)
    return typer.Exit(exit_code)


@app.command()
def run(
    query: Annotated[str, typer.Argument(help="The request to answer.")],
    companion: CompanionOption = "generic",
    session: Annotated[str | None, typer.Option(help="Continue in this session (default: a new one).")] = None,
    threshold: Annotated[float | None, typer.Option(help="Similarity threshold (0..1).")] = None,
    max_loops: Annotated[int | None, typer.Option(help="Maximum critique/revise loops.")] = None,
    min_score: Annotated[
        float | None, typer.Option(min=0, max=10, help="Stop once the critic scores a version at least this (0..10).")
    ] = None,
    max_tokens_per_run: Annotated[
        int | None, typer.Option(min=1, help="Budget: stop (stop_reason budget) once the run used this many tokens.")
    ] = None,
    max_cost_per_run: Annotated[
        float | None, typer.Option(min=0, help="Budget in USD: stop (stop_reason budget) once the run cost this much.")
    ] = None,
    as_json: JsonOption = False,
    database_url: DbOption = None,
) -> None:
    """Refine QUERY to convergence, showing each step and streaming tokens live.

    If it fails or is interrupted, it prints the session id and the `redraft resume` command that continues it."""
    import asyncio

    from redraft.errors import RedraftError

    known: dict[str, str] = {}  # the session id, once there is one
    streaming: list[str] = [""]  # the node whose tokens are being printed

    async def main() -> dict:
        from redraft.graph.companions import get_companion
        from redraft.graph.runner import thread_id_for
        from redraft.server.cli.lifecycle import call_done

        async with engine(database_url) as (runner, sessions):
            get_companion(companion)  # an unknown companion fails before a session is made
            if session:
                sid = await touch_session(sessions, session)
            else:
                sid = (await sessions.create(CLI_PRINCIPAL))["session_id"]
            known["session_id"] = sid

            async def on_token(node: str, text: str) -> None:
                if node != streaming[0]:
                    streaming[0] = node
                    out.print(f"\n[bold magenta]── {node} ──[/]")
                out.print(text, end="", markup=False)

            async def on_step(event: dict) -> None:
                if not as_json:
                    streaming[0] = ""
                    out.print(f"\n[dim]✓ {event['node']} checkpointed[/]")

            started = time.monotonic()
            result = await runner.refine(
                thread_id_for(sid, companion),
                companion,
                query,
                on_step=on_step,
                on_token=None if as_json else on_token,
                similarity_threshold=threshold,
                max_loops=max_loops,
                min_score=min_score,
                max_tokens_per_run=max_tokens_per_run,
                max_cost_per_run=max_cost_per_run,
            )
            # as after an MCP refine: the session's activity and the learning stats (server/cli/lifecycle.py)
            elapsed = time.monotonic() - started
            flags = await call_done(runner, sessions, sid, companion, "refine", result, elapsed, True)
            return {"session_id": sid, "companion": companion, **result, "anomalies": flags}

    def end_line() -> None:
        if streaming[0]:  # the error goes on its own line, not after a half-streamed reply
            out.print()

    try:
        data = asyncio.run(main())
    except RedraftError as exc:
        end_line()
        raise stopped(exc.code, masked(exc.message), exit_code_for(exc), known.get("session_id"), companion) from None
    except KeyboardInterrupt:
        end_line()
        message = "interrupted; the step in progress was abandoned, finished steps are saved"
        raise stopped("interrupted", message, EXIT_INTERRUPTED, known.get("session_id"), companion) from None

    def human(d: dict) -> None:
        out.print()
        show_thread(d)
        out.print(f"session [bold]{d['session_id']}[/]")
        if d.get("pending_gate"):
            command = resume_command(d["session_id"], companion)
            out.print(f"approve it with: {command}  (or answer it: --decision '<json>', see --help)", markup=False)

    emit(data, as_json, human)
