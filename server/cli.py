"""The ``redraft`` command line: serve, run, sessions, history, show, diff, fork, resume, companions, config.

Human output by default, ``--json`` for scripts. Exit codes: 0 ok, 2 bad input (wrong phase, unknown id, invalid
argument), 3 environment (database or model unreachable, bad settings), 130 interrupted. Never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from redraft.errors import ConfigError, InvalidInputError, ModelError, RedraftError, StorageError
from redraft.graph import timetravel as tt
from redraft.graph.checkpointer import open_persistence
from redraft.graph.companions import COMPANION_MAP, get_companion
from redraft.graph.runner import Runner, thread_id_for
from redraft.settings import Settings, configured_secrets, load_settings, mask_secrets

app = typer.Typer(
    name="redraft", help="Draft -> critique -> revise with durable checkpoints, over MCP.", no_args_is_help=True
)
out = Console()
err = Console(stderr=True)
CLI_PRINCIPAL = "anon"  # the CLI acts like an unauthenticated local client: it sees the same sessions

DbOption = Annotated[str | None, typer.Option("--database-url", help="Overrides REDRAFT_DATABASE_URL.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
CompanionOption = Annotated[str, typer.Option("--companion", "-c", help="Companion type.")]
SessionArg = Annotated[str, typer.Argument(help="Session id (see `redraft sessions`).")]
EXIT_ENVIRONMENT = (ConfigError, StorageError, ModelError)


@app.callback()
def _root() -> None:
    """redraft: refine answers with durable draft -> critique -> revise loops."""


# Settings given on the command line (--database-url), so that an error message can mask their secrets too.
cli_overrides: dict[str, str] = {}


def settings_from(database_url: str | None) -> Settings:
    if database_url:
        cli_overrides["database_url"] = database_url
    return load_settings(**cli_overrides)


@contextlib.asynccontextmanager
async def engine(database_url: str | None) -> AsyncIterator[tuple[Runner, Any]]:
    from redraft.server.sessions import SessionStore

    settings = settings_from(database_url)
    async with open_persistence(settings) as p:
        sessions = SessionStore(p.db, p.saver, settings.session_ttl_seconds, settings.max_sessions)
        yield Runner(p, settings), sessions


def execute(fn: Callable[[], Awaitable[Any]]) -> Any:
    return execute_sync(lambda: asyncio.run(fn()))


def emit(data: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        human(data)


def show_thread(data: dict) -> None:
    slot = data.get("slot")
    if slot is None:
        out.print(f"[dim]{data['thread_id']}[/]: no query yet")
        return
    out.print(f"[bold]Query:[/] {slot['query']}")
    out.print(
        f"phase [cyan]{data['phase']}[/] · {len(slot['critique'])} critique(s) · {len(slot['revision'])} revision(s)"
        f" · similarities {[round(s, 4) for s in data['similarities']]}"
    )
    if data.get("pending_gate"):
        out.print(f"[yellow]waiting for a decision before the {data['pending_gate']['gate']} step[/]")
    if data.get("stop_reason"):
        out.print(f"stopped: [green]{data['stop_reason']}[/] · best version {data['best_version']}")
        out.print(Panel(data["final_text"], title="final text"))
    elif slot["revision"] or slot["draft"]:
        text = slot["revision"][-1] if slot["revision"] else slot["draft"]
        out.print(Panel(text, title="current text"))


async def _session(sessions, session_id: str) -> str:
    return await sessions.touch(CLI_PRINCIPAL, session_id)


async def _thread(sessions, session_id: str, companion: str) -> str:
    get_companion(companion)  # an unknown companion is a clear error listing the known ones
    return thread_id_for(await _session(sessions, session_id), companion)


@app.command()
def serve(
    transport: Annotated[str, typer.Option(help="stdio or http (streamable HTTP at /mcp).")] = "stdio",
    host: Annotated[str | None, typer.Option(help="HTTP bind address (REDRAFT_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (REDRAFT_PORT).")] = None,
    database_url: DbOption = None,
) -> None:
    """Run the MCP server (stdio by default; --transport http for streamable HTTP at /mcp)."""
    from redraft.server import redaction
    from redraft.server.app import create_server

    settings = execute_sync(lambda: settings_from(database_url))
    logging.basicConfig(
        level=settings.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    redaction.install(settings)
    mcp = create_server(settings)
    if transport == "stdio":
        execute(lambda: mcp.run_stdio_async(show_banner=False))
    elif transport == "http":
        from redraft.server.http import serve_http

        execute(lambda: serve_http(mcp, settings, host or settings.host, port if port is not None else settings.port))
    else:
        err.print(f"[bold red]error:[/] unknown transport {transport!r}: use stdio or http")
        raise typer.Exit(2)


@app.command()
def run(
    query: Annotated[str, typer.Argument(help="The request to answer.")],
    companion: CompanionOption = "generic",
    session: Annotated[str | None, typer.Option(help="Continue in this session (default: a new one).")] = None,
    threshold: Annotated[float | None, typer.Option(help="Similarity threshold (0..1).")] = None,
    max_loops: Annotated[int | None, typer.Option(help="Maximum critique/revise loops.")] = None,
    as_json: JsonOption = False,
    database_url: DbOption = None,
) -> None:
    """Refine QUERY to convergence, showing each step and streaming tokens live."""

    async def main() -> dict:
        async with engine(database_url) as (runner, sessions):
            sid = await _session(sessions, session) if session else (await sessions.create(CLI_PRINCIPAL))["session_id"]
            current: list[str] = [""]

            async def on_token(node: str, text: str) -> None:
                if node != current[0]:
                    current[0] = node
                    out.print(f"\n[bold magenta]── {node} ──[/]")
                out.print(text, end="", highlight=False, markup=False)

            async def on_step(event: dict) -> None:
                if not as_json:
                    out.print(f"\n[dim]✓ {event['node']} checkpointed[/]")

            result = await runner.refine(
                thread_id_for(sid, companion),
                companion,
                query,
                on_step=on_step,
                on_token=None if as_json else on_token,
                similarity_threshold=threshold,
                max_loops=max_loops,
            )
            return {"session_id": sid, "companion": companion, **result}

    data = execute(main)

    def human(d: dict) -> None:
        out.print()
        show_thread(d)
        out.print(f"session [bold]{d['session_id']}[/]")

    emit(data, as_json, human)


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
        async with engine(database_url) as (runner, store):
            sid = await _session(store, session)
            return await tt.history(runner, thread_id_for(sid, companion), limit, before)

    def human(page: dict) -> None:
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
        async with engine(database_url) as (runner, store):
            thread = await _thread(store, session, companion)
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
        async with engine(database_url) as (runner, store):
            thread = await _thread(store, session, companion)
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
        async with engine(database_url) as (runner, store):
            thread = await _thread(store, session, companion)
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
        try:
            payload = json.loads(decision) if decision else None
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"--decision is not valid JSON: {exc.msg}") from None
        async with engine(database_url) as (runner, store):
            thread = await _thread(store, session, companion)
            return await runner.resume(thread, payload)

    emit(execute(main), as_json, show_thread)


@app.command()
def companions(as_json: JsonOption = False) -> None:
    """Companion types and their defaults."""
    settings = execute_sync(load_settings)
    data = [get_companion(name, settings.companions).public() for name in COMPANION_MAP]

    def human(rows: list[dict]) -> None:
        table = Table("name", "description", "threshold", "max loops", "temperature", "history", "mode")
        for c in rows:
            temp = "default" if c["temperature"] is None else str(c["temperature"])
            table.add_row(
                c["name"],
                c["description"],
                str(c["similarity_threshold"]),
                str(c["max_loops"]),
                temp,
                "cleared" if c["clear_history"] else "kept",
                c["mode"],
            )
        out.print(table)

    emit(data, as_json, human)


@app.command()
def config(as_json: JsonOption = False) -> None:
    """The effective settings (environment, .env and defaults), secrets masked."""
    data = execute_sync(load_settings).masked()

    def human(d: dict) -> None:
        table = Table("setting", "value")
        for key, value in d.items():
            table.add_row(f"REDRAFT_{key.upper()}", json.dumps(value) if not isinstance(value, str) else value)
        out.print(table)

    emit(data, as_json, human)


def execute_sync(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; a RedraftError becomes one error line and exit code 2 (input) or 3 (environment)."""
    try:
        return fn()
    except RedraftError as exc:
        message = mask_secrets(exc.message, configured_secrets(**cli_overrides))
        err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(3 if isinstance(exc, EXIT_ENVIRONMENT) else 2) from None


def _ts(value: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
