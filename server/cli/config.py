"""``redraft companions`` and ``redraft config``: what the settings make of the companions and the rest."""

from __future__ import annotations

import json

from redraft.server.cli.app import JsonOption, app, emit, execute_sync, out


@app.command()
def companions(as_json: JsonOption = False) -> None:
    """Companion types and their defaults."""
    from redraft.graph.companions import COMPANION_MAP, get_companion
    from redraft.settings import load_settings

    settings = execute_sync(load_settings)
    data = [get_companion(name, settings.companions).public() for name in COMPANION_MAP]

    def human(rows: list[dict]) -> None:
        from rich.table import Table

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
    """The effective settings (environment, .env and defaults), secrets masked, and the model each companion's
    drafter, critic and reviser resolves to (``models``)."""
    from redraft.graph.companions import role_models
    from redraft.settings import load_settings

    settings = execute_sync(load_settings)
    data = {**settings.masked(), "models": role_models(settings)}

    def human(d: dict) -> None:
        from rich.table import Table

        table = Table("setting", "value")
        for key, value in d.items():
            if key != "models":
                table.add_row(f"REDRAFT_{key.upper()}", json.dumps(value) if not isinstance(value, str) else value)
        out.print(table)
        roles = Table("companion", "role", "model", "endpoint", "sampling")
        for name, by_role in d["models"].items():
            for role, chosen in by_role.items():
                sampling = ", ".join(f"{k}={v}" for k, v in chosen.items() if k not in ("model", "base_url"))
                roles.add_row(name, role, chosen["model"], chosen["base_url"] or "OpenAI", sampling)
        out.print(roles)

    emit(data, as_json, human)
