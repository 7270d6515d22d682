"""The time-travel viewer: server-rendered pages under ``/ui`` on the HTTP server (and ``redraft ui``).

* ``/ui`` lists sessions; ``/ui/s/<session>/<companion>`` shows one thread: a paged timeline of its checkpoints
  (node, slot, iteration, time, branch), the versions of the text at any checkpoint with the critiques that produced
  them, a word diff of any two versions, a similarity (and score) chart with the stop reason, the pending step-mode
  gate, the thread's background runs, and ``.../branches`` shows the branches of a forked thread side by side.
* Actions (fork with an edited critique or revision, resume, a gate decision, cancel a run) are the MCP tools, called
  in process (``actions.py``). Pages refresh themselves while a run goes (``static/viewer.js`` polls ``.../live``
  every second and swaps in the parts that changed).
* Access (``security.py``): the server's own auth when it has some, a launch key for ``redraft ui``, otherwise as open
  as ``/mcp``; CSRF tokens on every action; a strict Content-Security-Policy; every text escaped (Jinja2 autoescape).
* Offline and small: Jinja2 templates, one stylesheet, about 100 lines of plain JavaScript, and the chart is inline SVG
  drawn by the template. Nothing is fetched from elsewhere.
"""

from __future__ import annotations

import weakref

from starlette.routing import Route

_viewers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def register_viewer(mcp, app) -> None:
    """Serve the viewer at ``/ui`` on ``mcp``'s HTTP app (custom routes: not MCP tools, not in any schema)."""
    from redraft.server.viewer.routes import Viewer

    viewer = Viewer(mcp, app)
    _viewers[mcp] = viewer
    mcp.add_provider(_provider(viewer.actions))  # at shutdown, actions still running are cancelled
    # the auth middleware of /mcp runs for these routes too; the viewer decides (auth mode: bearer header or cookie)
    for path in ("/ui", "/ui/{rest:path}"):
        mcp._additional_http_routes.append(
            Route(path, viewer, methods=["GET", "HEAD", "POST"], include_in_schema=False)
        )


def _provider(actions):
    import contextlib

    from fastmcp.server.providers.base import Provider

    class ActionsLifespan(Provider):
        @contextlib.asynccontextmanager
        async def lifespan(self):
            try:
                yield
            finally:
                await actions.close()

    return ActionsLifespan()


def use_launch_key(mcp, key: str) -> None:
    """``redraft ui`` without auth: only a browser that signed in with ``key`` may use the viewer."""
    viewer = _viewers[mcp]
    if viewer.access.mode == "open":
        viewer.access.launch_key = key


def viewer_of(mcp):
    return _viewers.get(mcp)
