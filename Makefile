# One task runner for people and CI. Every verb installs what it needs into .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install serve test lint typecheck unit bench clean

$(BIN)/energy-engine: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/energy-engine

## Run the engine on http://127.0.0.1:8000 (embedded PostgreSQL unless DATABASE_URL is set).
serve: install
	$(BIN)/energy-engine serve $(ARGS)

## Lint, type-check and run the whole test suite.
test: install lint typecheck
	$(BIN)/pytest $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy
	$(BIN)/mypy tests

## Run every benchmark scenario on this machine and rewrite benchmarks/RESULTS.md (~15 min).
## Needs wrk on PATH (apt-get install wrk); ARGS=--quick checks the run in about two minutes.
bench: install
	$(BIN)/python -m benchmarks $(ARGS)

## The quick benchmark run end to end, as a test (pytest -m bench).
.PHONY: bench-check
bench-check: install
	$(BIN)/pytest -m bench tests/e2e/test_bench.py $(ARGS)

unit: install
	$(BIN)/pytest tests/unit $(ARGS)

clean:
	rm -rf $(VENV) .energy-engine .pytest_cache .mypy_cache .ruff_cache
