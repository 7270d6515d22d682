"""The ``redraft`` Typer app and what every command shares: options, consoles, error handling, output.

A command module registers its commands on ``app`` with ``@app.command()``; ``redraft.server.cli`` imports it.

Start-up stays fast because nothing heavy is imported here or at the top of a command module: settings, the graph,
LangGraph, LangChain and FastMCP are imported inside the commands that use them, so ``redraft --help`` loads Typer
and Rich only, and ``redraft run`` never loads FastMCP (tests/test_cli_conventions.py checks the import graph).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from redraft import __version__

if TYPE_CHECKING:
    from rich.console import Console

    from redraft.graph.runner import Runner
    from redraft.settings import Settings

# The exit codes, one meaning each (also in `redraft --help`).
EXIT_OK = 0
EXIT_FAILED = 1  # the run (or the operation) failed: model error, conflict, lost lease ...
EXIT_USAGE = 2  # bad arguments, unknown ids, wrong phase, invalid settings (Click's own usage errors are 2 too)
EXIT_STORAGE = 3  # the database is unreachable or failing
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGINT

EXIT_CODES_HELP = (
    "Exit codes: 0 ok · 1 run failed · 2 usage (bad arguments, unknown id, invalid settings) · "
    "3 storage unavailable · 130 interrupted."
)

app = typer.Typer(
    name="redraft",
    help="Draft -> critique -> revise with durable checkpoints, over MCP.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
)
CLI_PRINCIPAL = "anon"  # the CLI acts like an unauthenticated local client: it sees the same sessions
CLI_SWEEP_LIMIT = 20  # expired sessions a command deletes on its way out (the rest go with the next commands)
NOT_A_TTY_WIDTH = 1 << 20  # output to a pipe or file is never wrapped or cut: lines are as long as their content


class _Output:
    """A Rich console made on first use (Rich is not imported before), for stdout or stderr.

    On a terminal it fits the terminal's width; otherwise (a pipe, a file) nothing is wrapped or cut. No colour when
    ``NO_COLOR`` is set (https://no-color.org) or ``--no-color`` was given, nor when the stream is not a terminal.
    """

    def __init__(self, stderr: bool) -> None:
        self.stderr = stderr
        self._console: Console | None = None

    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            stream = sys.stderr if self.stderr else sys.stdout
            tty = stream.isatty()
            plain = colour_disabled()
            self._console = Console(
                stderr=self.stderr,
                width=None if tty else NOT_A_TTY_WIDTH,
                soft_wrap=not tty,
                no_color=plain,
                color_system=None if plain else "auto",
                highlight=False,
            )
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console(), name)


out: Any = _Output(stderr=False)
err: Any = _Output(stderr=True)


def colour_disabled() -> bool:
    return bool(os.environ.get("NO_COLOR"))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"redraft {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    no_color: Annotated[bool, typer.Option("--no-color", help="No colour in any output (as NO_COLOR=1 does).")] = False,
) -> None:
    """redraft: refine answers with durable draft -> critique -> revise loops."""
    if no_color:
        os.environ["NO_COLOR"] = "1"


# --json: set by the option's callback, so that an error, too, is printed as JSON.
_json_output = False


def _json_flag(value: bool) -> bool:
    global _json_output
    _json_output = _json_output or value
    return value


DbOption = Annotated[str | None, typer.Option("--database-url", help="Overrides REDRAFT_DATABASE_URL.")]
JsonOption = Annotated[bool, typer.Option("--json", callback=_json_flag, help="Machine-readable output (JSON).")]
CompanionOption = Annotated[str, typer.Option("--companion", "-c", help="Companion type.")]
SessionArg = Annotated[str, typer.Argument(help="Session id (see `redraft sessions`).")]


# Settings given on the command line (--database-url), so that an error message can mask their secrets too.
cli_overrides: dict[str, str] = {}


def settings_from(database_url: str | None) -> Settings:
    from redraft.settings import load_settings

    if database_url:
        cli_overrides["database_url"] = database_url
    return load_settings(**cli_overrides)


@contextlib.asynccontextmanager
async def engine(database_url: str | None, sweep: bool = True) -> AsyncIterator[tuple[Runner, Any]]:
    from redraft.graph.checkpointer import open_persistence
    from redraft.graph.runner import Runner
    from redraft.server.sessions import SessionStore

    settings = settings_from(database_url)
    async with contextlib.AsyncExitStack() as stack:
        # an unreachable or unopenable database raises StorageError (exit 3), a bad setting ConfigError (exit 2)
        p = await stack.enter_async_context(open_persistence(settings))
        sessions = SessionStore(p.db, p.saver, settings.session_ttl_seconds, settings.max_sessions)
        yield Runner(p, settings), sessions
        # CLI sessions expire like MCP sessions: with no server sweeping this database, each command that succeeded
        # deletes a few sessions idle past the TTL, with their threads and checkpoints (server/sessions.py)
        if sweep:
            await sessions.sweep_quietly(CLI_SWEEP_LIMIT)


def execute(fn: Callable[[], Awaitable[Any]]) -> Any:
    import asyncio

    return execute_sync(lambda: asyncio.run(fn()))


def exit_code_for(exc: BaseException) -> int:
    from redraft import errors

    if isinstance(exc, errors.StorageError):
        return EXIT_STORAGE
    usage = (
        errors.ConfigError,
        errors.UnknownCompanionError,
        errors.InvalidInputError,
        errors.PhaseError,
        errors.SessionNotFoundError,
        errors.CheckpointNotFoundError,
        errors.NotFoundError,
        errors.UnsafePayloadError,
    )
    return EXIT_USAGE if isinstance(exc, usage) else EXIT_FAILED


def masked(text: str) -> str:
    from redraft.settings import configured_secrets, mask_secrets

    return mask_secrets(text, configured_secrets(**cli_overrides))


def execute_sync(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; a RedraftError becomes one error line (JSON with --json) on stderr and its exit code."""
    from redraft.errors import RedraftError

    try:
        return fn()
    except RedraftError as exc:
        report_error(exc.code, masked(exc.message))
        raise typer.Exit(exit_code_for(exc)) from None


def report_error(code: str, message: str, details: dict[str, Any] | None = None, lines: tuple[str, ...] = ()) -> None:
    """One error on stderr: ``error: message`` and then ``lines``; with --json one JSON object (with ``details``)."""
    if _json_output:
        typer.echo(json.dumps({"error": code, "message": message, **(details or {})}), err=True)
        return
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    for line in lines:
        err.print(line, soft_wrap=True, markup=False)


def emit(data: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        human(data)


def show_thread(data: dict) -> None:
    from rich.panel import Panel

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
    wide = out.is_terminal  # on a terminal a panel spans it; elsewhere it fits its text, never the huge width
    usage = (data.get("usage") or {}).get("query") or {}
    if usage.get("calls"):
        cost = "unknown" if usage["cost"] is None else f"${usage['cost']:.6f}"
        estimated = " (estimated)" if usage["estimated"] else ""
        out.print(
            f"tokens {usage['input_tokens']} in · {usage['output_tokens']} out{estimated} · cost {cost}"
            f" · {usage['calls']} model call(s)"
        )
    for flag in data.get("anomalies") or []:
        out.print(f"[yellow]unusual:[/] {flag['metric']} {flag['value']} > p95 {flag['p95']} ({flag['scope']})")
    if data.get("stop_reason"):
        out.print(f"stopped: [green]{data['stop_reason']}[/] · best version {data['best_version']}")
        out.print(Panel(data["final_text"], title="final text", expand=wide))
    elif slot["revision"] or slot["draft"]:
        text = slot["revision"][-1] if slot["revision"] else slot["draft"]
        out.print(Panel(text, title="current text", expand=wide))


async def touch_session(sessions, session_id: str) -> str:
    return await sessions.touch(CLI_PRINCIPAL, session_id)


async def thread_of(sessions, session_id: str, companion: str) -> str:
    from redraft.graph.companions import get_companion
    from redraft.graph.runner import thread_id_for

    get_companion(companion)  # an unknown companion is a clear error listing the known ones
    return thread_id_for(await touch_session(sessions, session_id), companion)
