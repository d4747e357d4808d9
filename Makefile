# mlgraph: `make demo` (set up + run everything on the demo experiments), `make test` (set up + test).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch that these machines carry on disk; elsewhere override, e.g.
# TORCH_SPEC="torch==2.13.0 --index-url <your CPU wheel index>".
TORCH_SPEC ?= torch==2.13.0
export SHARED_DRIVE ?= $(CURDIR)/.shared
export DAGSTER_HOME ?= $(SHARED_DRIVE)/state/dagster

.PHONY: venv demo test lint test-fast ui mlflow-ui mlflow-server dashboard serve slurm-up slurm-down postgres-up postgres-down backup doctor clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24"
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/mlgraph demo

# Everything, in two passes: the tier that needs no service on two workers (test-fast), then the tests that
# drive a daemon, Slurm, PostgreSQL or a browser one at a time (they share one cluster and one database
# server). Both passes always run; the target fails if either did.
SERVICE_TIERS := daemon or slurm or postgres or browser
test: venv
	$(BIN)/python -m pytest -m "not ($(SERVICE_TIERS))" -n 2 --dist worksteal; fast=$$?; \
	$(BIN)/python -m pytest -m "$(SERVICE_TIERS)" --durations=15; services=$$?; \
	test $$fast -eq 0 && test $$services -eq 0

# ruff: lint (pyflakes, bugbear, isort, pyupgrade, simplify, ...) and formatting, as configured in pyproject.toml.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The tier that needs no service (README, "Two commands"): no daemon, Slurm, PostgreSQL or browser; two workers.
test-fast: venv
	$(BIN)/python -m pytest -m "not ($(SERVICE_TIERS))" -n 2 --dist worksteal

# The daemon that `dagster dev` starts runs the automation sensors (on by default): whatever is missing or
# outdated for a registered experiment is materialized, heavy runs on Slurm when sbatch is on PATH.
ui: venv
	$(BIN)/mlgraph init
	@echo "automation on: new or changed experiments materialize by themselves (Automation tab; pipeline_assets/automation.py)"
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

mlflow-ui: venv
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///$(SHARED_DRIVE)/state/mlflow.db

# The shared tracking server, basic auth: export MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD first.
mlflow-server: venv
	$(BIN)/mlgraph mlflow-server --host 127.0.0.1 --port 5000

# The read-only job dashboard (docs/dashboard.md); basic auth when MLGRAPH_DASHBOARD_USERNAME/PASSWORD are set.
dashboard: venv
	$(BIN)/mlgraph dashboard --host 127.0.0.1 --port 8050

# The model service (docs/serving.md): make serve EXPERIMENT=student_engagement [SERVE_PORT=8000]
EXPERIMENT ?= student_engagement
SERVE_PORT ?= 8000
serve: venv
	$(BIN)/mlgraph serve --experiment $(EXPERIMENT) --host 127.0.0.1 --port $(SERVE_PORT)

# Operations (docs/operations.md): a consistent copy of every store outside the drive; one line per health check.
backup: venv
	$(BIN)/mlgraph backup

doctor: venv
	$(BIN)/mlgraph doctor

slurm-up:
	scripts/slurm-local up

slurm-down:
	scripts/slurm-local down

postgres-up:
	scripts/postgres-local up

postgres-down:
	scripts/postgres-local down

clean:
	rm -rf $(SHARED_DRIVE)
