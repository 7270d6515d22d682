"""``redraft stats``: what redraft has learned, per companion type and model (the ``redraft://stats/{companion}``
resource, from the terminal). MCP calls, tasks and the CLI's own runs all count."""

from __future__ import annotations

from typing import Annotated

import typer

from redraft.server.cli.app import DbOption, JsonOption, app, emit, engine, execute, out


@app.command()
def stats(
    companion: Annotated[str | None, typer.Argument(help="One companion type (default: all).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Only runs served by this model.")] = None,
    as_json: JsonOption = False,
    database_url: DbOption = None,
) -> None:
    """Learned stats: runs, stop reasons, typical iterations, recommended threshold, completion time, tokens and
    cost, by companion and model; and recent runs beyond the 95th percentile of them."""

    async def main() -> list[dict]:
        from redraft.graph.companions import COMPANION_MAP, get_companion
        from redraft.server.stats import StatsStore

        names = [get_companion(companion).name] if companion else list(COMPANION_MAP)
        async with engine(database_url) as (runner, _):
            store = StatsStore(runner.persistence.db)
            return [await store.summary(name, model=model) for name in names]

    def human(summaries: list[dict]) -> None:
        from rich.table import Table

        table = Table(
            "companion", "model", "runs", "stop reasons", "iterations", "threshold", "completion", "tokens", "cost"
        )
        for s in summaries:
            for m in s["by_model"].values() or [{"model": "-", **s}]:
                hints = m.get("suggestions") or {}
                table.add_row(
                    s["companion"],
                    m["model"],
                    str(m["runs"]),
                    ", ".join(f"{k} {v}" for k, v in m["stop_reasons"].items()),
                    str(hints.get("typical_iterations", "")),
                    str(hints.get("recommended_threshold", "")),
                    f"{hints['estimated_completion_s']} s" if "estimated_completion_s" in hints else "",
                    str(hints.get("typical_tokens", "")),
                    f"${hints['typical_cost']:.6f}" if "typical_cost" in hints else "",
                )
        out.print(table)
        for s in summaries:  # runs beyond the companion's norms, with the figure and the norm it broke
            for flag in s.get("anomalies") or []:
                if flag["scope"] == "companion":
                    out.print(
                        f"[yellow]unusual {s['companion']} run:[/] {flag['metric']} {flag['value']} > p95 "
                        f"{flag['p95']} (median {flag['median']}, {flag['runs']} runs)"
                    )

    emit(execute(main), as_json, human)
