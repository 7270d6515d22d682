"""The ``redraft`` command line."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Annotated

import typer

from redraft.errors import RedraftError
from redraft.settings import Settings, load_settings

app = typer.Typer(
    name="redraft", help="Draft -> critique -> revise with durable checkpoints, over MCP.", no_args_is_help=True
)


@app.callback()
def _root() -> None:
    """redraft: refine answers with durable draft -> critique -> revise loops."""


def settings_from(database_url: str | None) -> Settings:
    return load_settings(**({"database_url": database_url} if database_url else {}))


DbOption = Annotated[str | None, typer.Option("--database-url", help="Overrides REDRAFT_DATABASE_URL.")]


@app.command()
def serve(
    transport: Annotated[str, typer.Option(help="stdio or http (streamable HTTP at /mcp).")] = "stdio",
    host: Annotated[str | None, typer.Option(help="HTTP bind address (REDRAFT_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (REDRAFT_PORT).")] = None,
    database_url: DbOption = None,
) -> None:
    """Run the MCP server (stdio by default; --transport http for streamable HTTP at /mcp)."""
    from redraft.server.app import create_server

    settings = settings_from(database_url)
    logging.basicConfig(
        level=settings.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    mcp = create_server(settings)
    if transport == "stdio":
        asyncio.run(mcp.run_stdio_async(show_banner=False))
    elif transport == "http":
        asyncio.run(
            mcp.run_http_async(
                show_banner=False,
                transport="http",
                host=host or settings.host,
                port=port if port is not None else settings.port,
                path="/mcp",
                log_level=settings.log_level.lower(),
                host_origin_protection={"auto": "auto", "strict": True, "off": False}[settings.host_origin_protection],
                allowed_hosts=settings.allowed_hosts or None,
                allowed_origins=settings.allowed_origins or None,
            )
        )
    else:
        raise RedraftError(f"Unknown transport {transport!r}: use stdio or http.")


def main() -> None:
    try:
        app()
    except RedraftError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
