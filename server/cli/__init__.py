"""The ``redraft`` command line: serve, run, sessions, history, show, diff, fork, resume, companions, config.

Human output by default, ``--json`` for scripts. Exit codes: 0 ok, 2 bad input (wrong phase, unknown id, invalid
argument), 3 environment (database or model unreachable, bad settings), 130 interrupted. Never a traceback.

Each command group lives in its own module, which registers its commands on ``app`` (``redraft.server.cli.app``);
adding a command group is one import line below.
"""

from __future__ import annotations

import sys

from redraft.server.cli.app import app

# Command modules: importing one registers its commands (order = order in `redraft --help`).
from redraft.server.cli import serve  # noqa: F401  isort: skip
from redraft.server.cli import run  # noqa: F401  isort: skip
from redraft.server.cli import threads  # noqa: F401  isort: skip
from redraft.server.cli import config  # noqa: F401  isort: skip

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
