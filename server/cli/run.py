"""``redraft run``: refine a query to convergence, streaming each step."""

from __future__ import annotations

from typing import Annotated

import typer

from redraft.graph.runner import thread_id_for
from redraft.server.cli.app import (
    CLI_PRINCIPAL,
    CompanionOption,
    DbOption,
    JsonOption,
    app,
    emit,
    engine,
    execute,
    out,
    show_thread,
    touch_session,
)


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
            if session:
                sid = await touch_session(sessions, session)
            else:
                sid = (await sessions.create(CLI_PRINCIPAL))["session_id"]
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
