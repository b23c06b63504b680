# Two commands on a fresh machine:  `make sweep` (set up + default sweep), `make test` (set up + tests).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup sweep reproduce test test-fast test-unit test-trial test-e2e test-infra lint format bench mlflow-ui

setup:
	@bash scripts/setup.sh

# The default sweep, then its confirm stage: the best temperature and the independent baseline
# rerun on 3 fresh seeds, tested once, with CIs and a paired verdict (~12 min on 2 CPU cores).
sweep: setup
	$(PY) sweeps/temperature.py --confirm 1 --confirm-seeds 3

# The published-benchmark table (20 Newsgroups, Reuters R8/R52): TF-IDF + LR, the MiniLM
# teacher, an L4-H312 student independent / soft / hidden through the confirm stage, beside the
# literature's rows (bench/README.md). The documented reduced scale; on a GPU:
# `$(PY) bench/reproduce.py --scale full`.
reproduce: setup
	$(PY) bench/reproduce.py

# Every test has one cost marker (pyproject.toml): unit (pure functions, ms), trial (tiny models
# trained in-process, seconds), e2e (a sweep through Ray or a CLI subprocess), infra (two-node Ray
# cluster, PostgreSQL, Chromium, kill/resume, bench). `make test` runs all of them: what CI runs.
# `make test-fast` (= plain `pytest`) runs the unit tests; `make test-<marker>` runs one marker.
test: setup
	$(PY) -m pytest -q -m ""

test-fast: setup
	$(PY) -m pytest -q

test-unit test-trial test-e2e test-infra: test-%: setup
	$(PY) -m pytest -q -m $*

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) bench/run_all.py

mlflow-ui: setup
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlruns.db --host 127.0.0.1 --port 5000
