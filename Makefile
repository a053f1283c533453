# mldropd: `make run` starts the demo daemon; `make test` installs everything and runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Every pip install below goes through the pinned versions (`make constraints` refreshes them).
CONSTRAINTS ?= constraints.txt
PIP := $(PY) -m pip install --quiet -c $(CONSTRAINTS)
DEMO_DIR ?= .mldropd-demo
# Extra arguments for `make test`'s pytest (e.g. PYTEST_ARGS="-x tests/test_api_e2e.py").
PYTEST_ARGS ?=
# The unit tier of `make check`: no test that starts a daemon, a sandbox, a browser, Spark or a
# container.
UNIT := not slow and not browser and not spark and not container

.PHONY: install run test check lint docs browser bench constraints clean

# What running needs (the daemon and the demo's LightGBM model) ...
$(VENV)/.installed-run: pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e ".[demo]"
	touch $@

# ... and what developing needs: every extra (tests, browser, Spark, ruff, mypy).
$(VENV)/.installed-dev: pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e ".[dev]"
	touch $@ $(VENV)/.installed-run

install: $(VENV)/.installed-dev

run: $(VENV)/.installed-run
	$(VENV)/bin/mldropd demo --dir $(DEMO_DIR)

# Debian's chromium for the browser tests (never a downloaded browser build).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "install Debian's chromium (apt-get install chromium) for the browser tests" >&2; exit 1; fi; }

# Everything: unit tests, real daemons, the browser, Spark.
# Two workers (pytest-xdist), a module's tests on one of them: most tests wait on a daemon, a
# sandbox, Spark or podman; see LONGEST_MODULES in tests/conftest.py. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: install browser
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The fast tier (under a minute): lint, format, types, and the unit tests.
check: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "$(UNIT)"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# docs/configuration.md is generated from the settings declarations (tests/test_docs.py checks it).
docs: install
	$(PY) -m mldropd.config_docs > docs/configuration.md

# Re-pin every dependency: a fresh venv with every extra, then pip freeze (mldropd left out).
# `make constraints CONSTRAINTS=/tmp/c.txt` writes elsewhere, to compare before replacing.
constraints:
	rm -rf .constraints-venv
	$(PYTHON) -m venv .constraints-venv
	.constraints-venv/bin/python -m pip install --quiet --upgrade pip
	.constraints-venv/bin/python -m pip install --quiet ".[dev,bench,mlflow]"
	{ echo "# Pinned versions of every package mldropd and its extras install (pip install -c constraints.txt)."; \
	  echo "# CI, \`make\` and the Containerfile install with it, so every build gets the same set."; \
	  echo "# Refresh: make constraints (a fresh venv with every extra, then pip freeze)."; \
	  .constraints-venv/bin/python -m pip freeze --exclude mldropd; \
	} > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf .constraints-venv

clean:
	rm -rf $(VENV) $(DEMO_DIR) test-artifacts .pytest_cache .mypy_cache

# Performance benchmarks (bench/README.md): each writes bench/results/<name>.json.
# BENCH_ARGS is passed to every script (e.g. BENCH_ARGS="--repeat 5").
BENCH_LOCAL := engine_limit fused_local memory_flat api_latency planning dashboard
bench: install
	$(PIP) -e ".[bench]"
	@for b in $(BENCH_LOCAL); do echo "== bench.$$b"; $(PY) -m bench.$$b $(BENCH_ARGS) || exit 1; done
