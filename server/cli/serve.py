"""``redraft serve``: the MCP server over stdio or streamable HTTP."""

from __future__ import annotations

from typing import Annotated

import typer

from redraft.server.cli.app import DbOption, app, err, execute, execute_sync, settings_from


@app.command()
def serve(
    transport: Annotated[str, typer.Option(help="stdio or http (streamable HTTP at /mcp).")] = "stdio",
    host: Annotated[str | None, typer.Option(help="HTTP bind address (REDRAFT_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (REDRAFT_PORT).")] = None,
    database_url: DbOption = None,
) -> None:
    """Run the MCP server (stdio by default; --transport http for streamable HTTP at /mcp)."""
    from redraft import __version__
    from redraft.observability.logs import configure_logging
    from redraft.observability.traces import setup_tracing
    from redraft.server import redaction
    from redraft.server.app import create_server

    settings = execute_sync(lambda: settings_from(database_url))
    configure_logging(settings.log_level, settings.log_format)  # on stderr: over stdio, stdout speaks MCP
    redaction.install(settings)
    setup_tracing(__version__)  # only when OTEL_EXPORTER_OTLP_ENDPOINT is set
    mcp = create_server(settings)
    if transport == "stdio":
        from redraft.server.drain import serve_stdio  # SIGTERM/SIGINT drain it first (server/drain.py)

        execute(lambda: serve_stdio(mcp, settings))
    elif transport == "http":
        from redraft.server.http import serve_http

        execute(lambda: serve_http(mcp, settings, host or settings.host, port if port is not None else settings.port))
    else:
        err.print(f"[bold red]error:[/] unknown transport {transport!r}: use stdio or http")
        raise typer.Exit(2)
