# `make serve` and `make test` each bootstrap .venv on first use (and again when pyproject.toml changes).
# The probe is silent about interpreters it cannot use (a pyenv shim for a version that is not installed prints errors).
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 \
	&& echo $$p && break; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test bench lint clean chromium pgbouncer

# Bootstrap output goes to stderr: `make serve` speaks MCP on stdout.
$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "redraft needs Python >= 3.11 on PATH" >&2; exit 1; }
	@echo "creating $(VENV) with $(PYTHON) and installing redraft ..." >&2
	@$(PYTHON) -m venv $(VENV) >&2
	@$(BIN)/python -m pip install -q --upgrade pip >&2
	@$(BIN)/python -m pip install -q -e ".[dev]" >&2
	@touch $(STAMP)

serve: $(STAMP)  ## MCP server over stdio on the embedded SQLite database (see README for HTTP)
	@$(BIN)/redraft serve $(ARGS)

# The suite runs in parallel (pytest-xdist): the fault tests spend most of their time waiting on stalls and leases.
JOBS ?= 2
# Tests marked solo (timing bounds on this process's own event loop) run alone afterwards; exit 5 = none selected.
test: $(STAMP) chromium  ## the whole test suite (PostgreSQL tests fail, never skip, when CI=true)
	$(BIN)/python -m pytest -n $(JOBS) -m "not solo" $(ARGS) || [ $$? -eq 5 ]
	$(BIN)/python -m pytest -m solo $(ARGS) || [ $$? -eq 5 ]

# The viewer's browser tests (tests/test_viewer.py) drive Debian's chromium: installed when missing, as root (or with
# passwordless sudo) where possible; otherwise those tests skip with the reason (and fail with CI=true).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ $(SUDO) apt-get install -y -q chromium >&2 || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; } >&2; } \
	|| echo "chromium could not be installed: the viewer's browser tests will skip (CI=true: fail)" >&2

bench: $(STAMP) pgbouncer  ## benchmarks: prints a table and writes docs/benchmarks.md
	$(BIN)/python -m bench $(ARGS)

# The replica rows measure 4 replicas through PgBouncer (transaction mode) too: Debian's package, installed when
# missing, as for chromium; without it that row says "not installed".
pgbouncer:
	@command -v pgbouncer >/dev/null 2>&1 || test -x /usr/sbin/pgbouncer || \
	{ $(SUDO) apt-get install -y -q pgbouncer >&2 || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q pgbouncer; } >&2; } \
	|| echo "pgbouncer could not be installed: the bench's PgBouncer row will say so" >&2

# basedpyright (pyrightconfig.json) checks that every import resolves, as an editor would see it.
lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/basedpyright --pythonpath $(BIN)/python

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
