# mldropd: `make run` starts the demo daemon; `make test` installs everything and runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= .mldropd-demo

.PHONY: install run test lint browser bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,demo]"
	touch $@

run: install
	$(VENV)/bin/mldropd demo --dir $(DEMO_DIR)

# Debian's chromium for the browser tests (never a downloaded browser build).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "install Debian's chromium (apt-get install chromium) for the browser tests" >&2; exit 1; fi; }

test: install browser
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check mldropd jobs tests

clean:
	rm -rf $(VENV) $(DEMO_DIR) test-artifacts .pytest_cache

# Performance benchmarks (README "Performance"): each writes bench/results/<name>.json.
# BENCH_ARGS is passed to every script (e.g. BENCH_ARGS="--repeat 5").
BENCH_LOCAL := engine_limit fused_local memory_flat api_latency planning dashboard
bench: install
	@for b in $(BENCH_LOCAL); do echo "== bench.$$b"; $(PY) -m bench.$$b $(BENCH_ARGS) || exit 1; done
