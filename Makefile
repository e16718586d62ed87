# GridDispatch — the two commands a newcomer needs are `make up` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
UV_VERSION := 0.13.9
STAMP  := $(VENV)/.installed

.PHONY: install up down status test test-fast lint format schemas manifests lock bench clean

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip sync -q --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	@touch $@

install: $(STAMP)  ## create .venv from the lock file

up: $(STAMP)  ## start Kafka, PostgreSQL and every service with a demo city (Ctrl-C stops all)
	$(BIN)/griddispatch up

down: $(STAMP)  ## stop a stack left running by `griddispatch stack up`
	$(BIN)/griddispatch stack down

status: $(STAMP)
	$(BIN)/griddispatch stack status

test: $(STAMP)  ## the whole suite; starts its own Kafka and PostgreSQL on free ports
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy shared services bench tests deploy/grafana/dashboards.py deploy/k8s/departments.py

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

schemas: $(STAMP)  ## regenerate docs/schemas and docs/asyncapi.json from the event models
	$(BIN)/griddispatch contract generate

lock:  ## re-pin dependencies (needs the venv's uv): dev + runtime (the image's)
	$(BIN)/uv pip compile pyproject.toml --extra dev -o requirements.lock --python-version 3.11 -q
	$(BIN)/uv pip compile pyproject.toml -o requirements.runtime.lock --python-version 3.11 -q

manifests: $(STAMP)  ## regenerate the Grafana dashboards and the departments' KafkaUsers
	$(BIN)/python deploy/grafana/dashboards.py
	$(BIN)/python deploy/k8s/departments.py

bench: $(STAMP)  ## every benchmark; figures go to stdout (see docs/benchmarks.md)
	$(BIN)/python bench/outbox.py
	$(BIN)/python bench/intake.py
	$(BIN)/python bench/router.py
	$(BIN)/python bench/escalation.py --schedulers 0 --processes 3
	$(BIN)/python bench/escalation_fold.py
	$(BIN)/python bench/notifier.py
	$(BIN)/python bench/e2e.py --seconds 15
	$(BIN)/python bench/grid_task.py
	$(BIN)/python bench/performance_report.py

clean:
	-$(BIN)/griddispatch stack down
	rm -rf .local/kafka .local/postgres
