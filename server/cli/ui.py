"""``redraft ui``: the time-travel viewer in the browser (server/viewer/), on this machine.

It serves the same HTTP app as ``redraft serve --transport http`` (so ``/mcp`` answers too) bound to 127.0.0.1 by
default, with the viewer at ``/ui``. Without auth settings the command mints a launch key and prints a link that
carries it in the URL fragment (never sent over the network, never in an access log); the browser trades it once for
an HttpOnly cookie. With ``REDRAFT_AUTH_TOKENS`` or ``REDRAFT_JWT_PUBLIC_KEY`` set, the viewer asks for a token instead.
"""

from __future__ import annotations

from typing import Annotated

import typer

from redraft.server.cli.app import DbOption, app, err, execute, execute_sync, settings_from

DEFAULT_PORT = 8765


@app.command()
def ui(
    host: Annotated[str, typer.Option(help="Bind address (loopback by default: the viewer is for this machine).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="HTTP port.")] = DEFAULT_PORT,
    open_browser: Annotated[bool, typer.Option("--open/--no-open", help="Open the link in a browser.")] = False,
    database_url: DbOption = None,
) -> None:
    """Serve the time-travel viewer (timeline, versions, diffs, forks, gates) at http://HOST:PORT/ui."""
    import secrets
    import sys

    from redraft.observability.logs import configure_logging
    from redraft.server import redaction
    from redraft.server.app import create_server
    from redraft.server.http import serve_http
    from redraft.server.viewer import use_launch_key

    settings = execute_sync(lambda: settings_from(database_url))
    configure_logging(settings.log_level, settings.log_format)
    redaction.install(settings)
    mcp = create_server(settings)
    shown = f"[{host}]" if ":" in host else host
    if mcp.auth is None:
        key = secrets.token_urlsafe(24)
        use_launch_key(mcp, key)
        link = f"http://{shown}:{port}/ui/login#key={key}"
    else:
        link = f"http://{shown}:{port}/ui"
    # the link on stdout (one line, for scripts and tests); a note on stderr
    print(link, flush=True)
    err.print("redraft viewer: open the link above" + (" and sign in with your token" if mcp.auth else ""))
    if open_browser:
        import webbrowser

        webbrowser.open(link)
    sys.stdout.flush()
    execute(lambda: serve_http(mcp, settings, host, port))
