"""``redraft prune``: delete old sessions, threads, checkpoints, finished run records and learning stats.

The same pruning the server runs on its sweep (``graph/retention.py``), on demand: in batches, never touching a
thread while work runs on it, safe beside running servers. ``--dry-run`` counts without deleting.
"""

from __future__ import annotations

from typing import Annotated

import typer

from redraft.server.cli.app import DbOption, JsonOption, app, emit, engine, execute, out, settings_from


@app.command()
def prune(
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="Age: 30d, 12h, 90m, 45s or 2w (a bare number is days). Default: REDRAFT_RETENTION_DAYS (30).",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would be freed; delete nothing.")] = False,
    as_json: JsonOption = False,
    database_url: DbOption = None,
) -> None:
    """Delete sessions idle, threads untouched and stats recorded longer ago than --older-than, and say what that
    freed. Threads with a step or background run in progress are skipped."""

    async def main() -> dict:
        from redraft.errors import InvalidInputError
        from redraft.graph.retention import parse_age
        from redraft.graph.retention import prune as prune_old

        settings = settings_from(database_url)
        if older_than is not None:
            seconds = parse_age(older_than)
        elif settings.retention_days > 0:
            seconds = settings.retention_days * 86400.0
        else:
            raise InvalidInputError("REDRAFT_RETENTION_DAYS is 0 (keep everything): say --older-than, e.g. 30d.")
        # engine: an unreachable database exits 3, as everywhere; no session sweep (a dry run deletes nothing)
        async with engine(database_url, sweep=False) as (runner, _):
            return await prune_old(runner.persistence.db, runner.persistence.saver, seconds, dry_run=dry_run)

    def human(report: dict) -> None:
        import datetime

        from redraft.graph.retention import freed_summary

        before = datetime.datetime.fromtimestamp(report["cutoff"]).strftime("%Y-%m-%d %H:%M:%S")
        out.print(f"older than {before}: {freed_summary(report)}", markup=False)

    emit(execute(main), as_json, human)
