"""Inspecting and steering threads: sessions, history, show, diff, fork, resume."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from redraft.server.cli.app import (
    CLI_PRINCIPAL,
    CompanionOption,
    DbOption,
    JsonOption,
    SessionArg,
    app,
    emit,
    engine,
    execute,
    out,
    show_thread,
    thread_of,
    touch_session,
)


@app.command()
def sessions(
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    as_json: JsonOption = False,
    database_url: DbOption = None,
) -> None:
    """Live sessions (of unauthenticated clients and the CLI), most recently used first."""

    async def main() -> list[dict]:
        async with engine(database_url) as (_, store):
            return await store.list(CLI_PRINCIPAL, limit)

    def human(rows: list[dict]) -> None:
        from rich.table import Table

        table = Table("last used", "expires")
        table.add_column("session", no_wrap=True, min_width=36)
        for r in rows:
            table.add_row(_ts(r["last_accessed"]), _ts(r["expires_at"]), r["session_id"])
        out.print(table if rows else "[dim]no live sessions[/]")

    emit(execute(main), as_json, human)


@app.command()
def history(
    session: SessionArg,
    companion: CompanionOption = "generic",
    limit: Annotated[int, typer.Option(help="Page size.")] = 20,
    before: Annotated[str | None, typer.Option(help="next_before of the previous page.")] = None,
    as_json: JsonOption = False,
    database_url: DbOption = None,
) -> None:
    """A thread's checkpoints, newest first."""

    async def main() -> dict:
        from redraft.graph import timetravel as tt
        from redraft.graph.runner import thread_id_for

        async with engine(database_url) as (runner, store):
            sid = await touch_session(store, session)
            return await tt.history(runner, thread_id_for(sid, companion), limit, before)

    def human(page: dict) -> None:
        from rich.table import Table

        table = Table("step", "node", "phase", "c/r", "similarity", "branch")
        table.add_column("checkpoint", no_wrap=True, min_width=36)
        for e in page["checkpoints"]:
            counts = f"{e['critiques']}/{e['revisions']}" if e["critiques"] is not None else ""
            sim = f"{e['similarity']:.4f}" if e["similarity"] is not None else ""
            branch = ("head" if e["on_head_branch"] else e["branch"][-8:]) + (" (edited)" if e["edited"] else "")
            table.add_row(str(e["step"]), e["node"] or "", e["phase"] or "", counts, sim, branch, e["checkpoint_id"])
        out.print(table)
        if page["next_before"]:
            out.print(f"[dim]more: --before {page['next_before']}[/]")

    emit(execute(main), as_json, human)


@app.command()
def show(
    session: SessionArg,
    companion: CompanionOption = "generic",
    at: Annotated[str | None, typer.Option("--at", help="A checkpoint id from `history`.")] = None,
    as_json: JsonOption = False,
    database_url: DbOption = None,
) -> None:
    """A thread now, or as it was at a checkpoint."""

    async def main() -> dict:
        from redraft.graph import timetravel as tt

        async with engine(database_url) as (runner, store):
            thread = await thread_of(store, session, companion)
            return await (tt.state_at(runner, thread, at) if at else runner.status(thread))

    emit(execute(main), as_json, show_thread)


@app.command()
def diff(
    session: SessionArg,
    from_version: Annotated[int, typer.Argument(help="0 = the draft, k = revision k.")],
    to_version: Annotated[int, typer.Argument()],
    companion: CompanionOption = "generic",
    at: Annotated[str | None, typer.Option("--at", help="As of this checkpoint.")] = None,
    as_json: JsonOption = False,
    database_url: DbOption = None,
) -> None:
    """Word diff of two versions of the current query."""

    async def main() -> dict:
        from redraft.graph import timetravel as tt

        async with engine(database_url) as (runner, store):
            thread = await thread_of(store, session, companion)
            return await tt.diff(runner, thread, from_version, to_version, at)

    def human(d: dict) -> None:
        out.print(f"similarity {d['similarity']:.4f}")
        for line in d["diff"].splitlines():
            style = "green" if line.startswith("+") else "red" if line.startswith("-") else "dim"
            out.print(line, style=style, highlight=False, markup=False)

    emit(execute(main), as_json, human)


@app.command()
def fork(
    session: SessionArg,
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint id to branch from.")],
    companion: CompanionOption = "generic",
    critique: Annotated[str | None, typer.Option(help="Replace the pending critique.")] = None,
    revision: Annotated[str | None, typer.Option(help="Replace the latest revision.")] = None,
    as_json: JsonOption = False,
    database_url: DbOption = None,
) -> None:
    """Branch from a past checkpoint with an edited critique or revision; continue it with `resume`."""

    async def main() -> dict:
        from redraft.graph import timetravel as tt

        async with engine(database_url) as (runner, store):
            thread = await thread_of(store, session, companion)
            return await tt.fork(runner, thread, checkpoint, critique, revision)

    emit(execute(main), as_json, show_thread)


@app.command()
def resume(
    session: SessionArg,
    companion: CompanionOption = "generic",
    decision: Annotated[
        str | None, typer.Option(help='A gate decision as JSON, e.g. \'{"action": "approve"}\'.')
    ] = None,
    as_json: JsonOption = False,
    database_url: DbOption = None,
) -> None:
    """Continue a thread stopped by a crash, an error, a fork or a step-mode gate."""

    async def main() -> dict:
        from redraft.errors import InvalidInputError
        from redraft.server.cli.lifecycle import call_done

        try:
            payload = json.loads(decision) if decision else None
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"--decision is not valid JSON: {exc.msg}") from None
        async with engine(database_url) as (runner, store):
            thread = await thread_of(store, session, companion)
            started = time.monotonic()
            result = await runner.resume(thread, payload)
            sid = thread.rsplit(":", 1)[0]
            await call_done(runner, store, sid, companion, "resume", result, time.monotonic() - started, False)
            return result

    emit(execute(main), as_json, show_thread)


def _ts(value: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")
