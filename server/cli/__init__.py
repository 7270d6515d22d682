"""The ``redraft`` command line: serve, run, sessions, history, show, diff, fork, resume, companions, config.

Human output by default, ``--json`` for scripts (errors too: one JSON object on stderr). Exit codes: 0 ok, 1 run
failed, 2 usage (bad arguments, unknown id, wrong phase, invalid settings), 3 storage unavailable, 130 interrupted.
Never a traceback for an expected failure.

Each command group lives in its own module, which registers its commands on ``app`` (``redraft.server.cli.app``);
adding a command group is one import line below.
"""

from __future__ import annotations

import os
import sys

from redraft.server.cli.app import EXIT_INTERRUPTED, app

# Command modules: importing one registers its commands (order = order in `redraft --help`).
from redraft.server.cli import serve  # noqa: F401  isort: skip
from redraft.server.cli import run  # noqa: F401  isort: skip
from redraft.server.cli import threads  # noqa: F401  isort: skip
from redraft.server.cli import config  # noqa: F401  isort: skip
from redraft.server.cli import prune  # noqa: F401  isort: skip
from redraft.server.cli import stats  # noqa: F401  isort: skip
from redraft.server.cli import ui  # noqa: F401  isort: skip

__all__ = ["app", "main"]


def main() -> None:
    args = sys.argv[1:]
    end = args.index("--") if "--" in args else len(args)
    if "--no-color" in args[:end]:  # honoured anywhere on the line (and before --help prints anything)
        os.environ["NO_COLOR"] = "1"
        args = [a for a in args[:end] if a != "--no-color"] + args[end:]
    try:
        app(args=args, prog_name="redraft")
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    exit_now(code)


def exit_now(code: object) -> None:
    """End the process with ``code`` once the command is done, skipping the interpreter's teardown of every module
    (LangChain, OpenAI and pydantic leave a large heap: 1-3 s on a loaded machine, seconds after Ctrl-C). Exit
    handlers still run and output is flushed; with another thread still running, the normal exit waits for it."""
    import atexit
    import threading

    others = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    if others or not isinstance(code, int | None):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (redraft ... | head): nothing more to say
            pass
    os._exit(code or 0)


if __name__ == "__main__":
    main()
