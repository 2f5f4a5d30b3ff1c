# pd-gateway — every target installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: install system-deps run test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,embedded]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

system-deps:
	./scripts/system-deps.sh

## The demo: gateway + demo HR/CRM upstream on the example policies.
run: install
	./deploy/local/run.sh

## Lint, types and the whole test suite (real servers, real tokens, real promtool).
test: install system-deps lint
	$(BIN)/python -m pytest -q --basetemp="$$(mktemp -d /tmp/pd-gateway-tests.XXXXXX)"

lint: install
	$(BIN)/ruff check gateway tests deploy bench
	$(BIN)/ruff format --check gateway tests deploy bench
	$(BIN)/mypy

format: install
	$(BIN)/ruff format gateway tests deploy bench
	$(BIN)/ruff check --fix gateway tests deploy bench

## Benchmarks: gateway vs a bare aiohttp proxy side by side, decision and token costs.
bench: install system-deps
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
