"""``python -m redraft``: the ``redraft`` command line."""

from redraft.server.cli import main

if __name__ == "__main__":
    main()
