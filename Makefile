# Two commands on a fresh machine:  `make sweep` (set up + default sweep), `make test` (set up + tests).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup sweep test test-fast lint format bench mlflow-ui

setup:
	@bash scripts/setup.sh

sweep: setup
	$(PY) sweeps/temperature.py

# The whole suite, slow end-to-end tests included (two-node Ray cluster, PostgreSQL, Chromium):
# what CI runs. `make test-fast` (= plain `pytest`) skips the tests marked slow.
test: setup
	$(PY) -m pytest -q -m ""

test-fast: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) bench/run_all.py

mlflow-ui: setup
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlruns.db --host 127.0.0.1 --port 5000
