# pd-gateway — every target installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | sha1sum | cut -c1-12)
FUZZ_SECONDS ?= 20

.PHONY: install system-deps run test lint format fuzz bench profile soak lock vendor audit-deps clean

# The locked versions (requirements.lock) are constraints: every machine gets the same ones.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[dev,embedded]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

system-deps:
	./scripts/system-deps.sh

## The demo: gateway + demo HR/CRM upstream on the example policies.
run: install
	./scripts/demo-deps.sh
	./deploy/local/run.sh

## Lint, types, bounded fuzzing and the whole test suite (real servers, tokens, promtool).
test: install system-deps lint fuzz
	$(BIN)/python -m pytest -q --basetemp="$$(mktemp -d /tmp/pd-gateway-tests.XXXXXX)"

lint: install
	$(BIN)/ruff check gateway tests deploy bench scripts dashboards
	$(BIN)/ruff format --check gateway tests deploy bench scripts dashboards
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format gateway tests deploy bench scripts dashboards
	$(BIN)/ruff check --fix gateway tests deploy bench scripts dashboards

## Coverage-guided fuzzing (atheris) of paths, headers, tokens and session cookies, FUZZ_SECONDS per target.
fuzz: install
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(BIN)/python tests/fuzz/run.py

## Benchmarks: gateway vs a bare aiohttp proxy side by side, decision and token costs.
bench: install
	WITH_BENCH=1 ./scripts/system-deps.sh
	$(BIN)/python bench/run.py

## Where the gateway's CPU goes under load: py-spy samples, top functions per thread (docs/benchmarks.md).
profile: install
	WITH_BENCH=1 ./scripts/system-deps.sh
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/pyspy.py

## Resident memory under 10 minutes of steady load (SOAK_SECONDS, SOAK_DURABILITY).
soak: install
	WITH_BENCH=1 ./scripts/system-deps.sh
	$(BIN)/python bench/soak.py

## Re-resolve requirements.lock after a change of pyproject.toml.
lock: install
	$(BIN)/python scripts/lock.py

## The console's browser libraries (htmx, uPlot) from assets/console/package-lock.json into the package.
vendor:
	$(PYTHON) scripts/vendor_console.py

## Known vulnerabilities in the locked versions (pip-audit; needs PyPI's per-release JSON API).
audit-deps: install
	$(BIN)/python -m pip install -q pip-audit
	$(BIN)/pip-audit --strict --no-deps --disable-pip -r requirements.lock

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
