"""The ``redraft`` Typer app and what every command shares: options, consoles, error handling, output.

A command module registers its commands on ``app`` with ``@app.command()``; ``redraft.server.cli`` imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from redraft.errors import ConfigError, ModelError, RedraftError, StorageError
from redraft.graph.checkpointer import open_persistence
from redraft.graph.companions import get_companion
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


def execute_sync(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; a RedraftError becomes one error line and exit code 2 (input) or 3 (environment)."""
    try:
        return fn()
    except RedraftError as exc:
        message = mask_secrets(exc.message, configured_secrets(**cli_overrides))
        err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(3 if isinstance(exc, EXIT_ENVIRONMENT) else 2) from None


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


async def touch_session(sessions, session_id: str) -> str:
    return await sessions.touch(CLI_PRINCIPAL, session_id)


async def thread_of(sessions, session_id: str, companion: str) -> str:
    get_companion(companion)  # an unknown companion is a clear error listing the known ones
    return thread_id_for(await touch_session(sessions, session_id), companion)
