# One task runner for people and CI. Every verb installs what it needs into .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

# What `make test` leaves out: end-to-end checks that take minutes (`make test-all` runs them).
FAST := not slow and not bench
# pytest processes (pytest-xdist), each with its own embedded PostgreSQL; auto: one a core.
WORKERS ?= auto

.PHONY: install system-packages serve format lint typecheck test test-all unit bench plans clean

$(BIN)/energy-engine: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/energy-engine

## Run the engine on http://127.0.0.1:8000 (embedded PostgreSQL unless DATABASE_URL is set).
serve: install
	$(BIN)/energy-engine serve $(ARGS)

## Rewrite the code in the house style and fix what ruff can fix.
format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## Check style and types without changing anything (ruff, mypy --strict on src and tests).
lint: install typecheck
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy
	$(BIN)/mypy tests

# The tests start Mosquitto and nats-server of their own and drive Chromium: Debian packages,
# installed when missing (as root with apt-get), else named in one line.
SYSTEM_PACKAGES := mosquitto:/usr/sbin/mosquitto nats-server:/usr/sbin/nats-server chromium:/usr/bin/chromium
system-packages:
	@missing=""; for entry in $(SYSTEM_PACKAGES); do \
	    package=$${entry%%:*}; path=$${entry#*:}; \
	    command -v $$package >/dev/null 2>&1 || [ -x $$path ] || missing="$$missing $$package"; \
	done; \
	if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	        echo "installing Debian packages the tests need:$$missing"; \
	        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	    else \
	        echo "the tests need these packages, not installed here:$$missing (Debian: sudo apt-get install$$missing)"; \
	        exit 1; \
	    fi; \
	fi

## What CI runs: lint, then every test but the slow end-to-end ones, with coverage (floor 90 %).
test: system-packages lint
	$(call covered,$(FAST))

## Lint and every test, the slow end-to-end and benchmark checks too, with coverage.
test-all: lint
	$(call covered,)

# pytest under coverage (serve, simulate and other subprocesses included, see pyproject.toml),
# then the report; $(1) is a marker expression, empty for every test.
define covered
	$(BIN)/coverage erase
	$(BIN)/coverage run -m pytest -n $(WORKERS) $(if $(1),-m "$(1)") $(ARGS)
	$(BIN)/coverage combine --quiet
	$(BIN)/coverage report
endef

## Run every benchmark scenario on this machine and rewrite benchmarks/RESULTS.md (~15 min).
## Needs wrk on PATH (apt-get install wrk); ARGS=--quick checks the run in about two minutes.
bench: install
	$(BIN)/python -m benchmarks $(ARGS)

## The quick benchmark run end to end, as a test (pytest -m bench).
.PHONY: bench-check
bench-check: install
	$(BIN)/pytest -m bench tests/e2e/test_bench.py $(ARGS)

## Rewrite docs/analytics-plans.md: EXPLAIN of the analytics statements on a fixed history.
plans: install
	$(BIN)/python -m tests.plans --write

unit: install
	$(BIN)/pytest tests/unit $(ARGS)

clean:
	rm -rf $(VENV) .energy-engine .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* htmlcov
