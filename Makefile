# Hearth — `make help` lists the targets. The two that matter: `make run`, `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# pip's own version: `make lock` locks it (with its hash); `make install` installs it first.
PIP_VERSION := 26.3
# Nothing Hearth runs may phone home.
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := true
export BENTOML_DO_NOT_TRACK := true
export MLFLOW_ENABLE_TELEMETRY := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# pip's file-index warnings drown out real errors; keep everything else.
PIP_QUIET := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n\n"} /^[a-zA-Z_-]+:.*##/ {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): requirements.lock pyproject.toml
	@echo "==> creating $(VENV) with $(PYTHON) and installing the locked dependencies (a few minutes the first time)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# pip first, at the locked version and hash; then every package by hash, none unhashed.
	@grep -E '^pip==' requirements.lock > $(VENV)/pip.lock
	@set -o pipefail; $(BIN)/pip install -q --require-hashes -r $(VENV)/pip.lock $(PIP_QUIET)
	@set -o pipefail; $(BIN)/pip install -q --require-hashes -r requirements.lock $(PIP_QUIET)
	@# Hearth itself, editable, built by the locked setuptools (no isolated, unhashed build env).
	@set -o pipefail; $(BIN)/pip install -q --no-deps --no-build-isolation -e . $(PIP_QUIET)
	@touch $@

.PHONY: install
install: $(STAMP) ## Create .venv and install Hearth with its locked dependencies

.PHONY: run
run: install ## Set up, then run the main job: pipeline → champion → drift → canary promotion → rollback drill
	$(BIN)/hearth run

.PHONY: system-deps
system-deps: ## Install redis-server, postgresql (store tests), chromium and chromium-driver (browser tests), wrk (the bench's cross-check): Debian packages, if missing
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	{ command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } \
		|| missing="$$missing postgresql"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	command -v wrk >/dev/null 2>&1 || missing="$$missing wrk"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "==> installing$$missing (Debian packages) for the store, browser and bench tests"; \
		apt-get update -qq && apt-get install -y -qq $$missing; \
	else \
		echo "note: missing$$missing; install (e.g. sudo apt-get install$$missing)" \
		     "or the Redis / PostgreSQL store tests and the browser tests are skipped" \
		     "(and the bench has no wrk cross-check)"; \
	fi

.PHONY: test
test: install system-deps lint typecheck ## Set up, then run ruff, mypy and the whole test suite
	$(BIN)/pytest

.PHONY: screenshots
screenshots: install system-deps ## Regenerate the README's screenshots (docs/*.png) with the browser tests (tests/browser)
	HEARTH_SCREENSHOTS_DIR=$(CURDIR)/docs $(BIN)/pytest tests/browser -q

.PHONY: test-fast
test-fast: install ## Only the tests not marked slow
	$(BIN)/pytest -m "not slow"

.PHONY: lint
lint: install ## ruff lint and format check; import-linter holds the layers
	$(BIN)/ruff check src flows bentos tests benchmarks tools
	$(BIN)/ruff format --check src flows bentos tests benchmarks tools
	$(BIN)/lint-imports

.PHONY: format
format: install ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix src flows bentos tests benchmarks tools
	$(BIN)/ruff format src flows bentos tests benchmarks tools

.PHONY: typecheck
typecheck: install ## mypy on src/, flows/ and bentos/
	$(BIN)/mypy

.PHONY: serve
serve: install ## Serve the API on :3000 (TOPOLOGY=monolith|microservices)
	$(BIN)/hearth serve --topology $(or $(TOPOLOGY),monolith)

.PHONY: build
build: install ## Import champion/challenger into BentoML and build the four bentos
	$(BIN)/hearth build

.PHONY: container-deps
container-deps: ## Install Debian's docker.io, docker-compose and debootstrap (if missing), then start dockerd
	@missing=""; \
	command -v dockerd >/dev/null 2>&1 || missing="$$missing docker.io"; \
	command -v docker-compose >/dev/null 2>&1 || missing="$$missing docker-compose"; \
	command -v debootstrap >/dev/null 2>&1 || missing="$$missing debootstrap"; \
	if [ -n "$$missing" ]; then \
		echo "==> installing$$missing (Debian packages) for the container images"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	$(MAKE) --no-print-directory engine

.PHONY: engine
engine: install ## Start dockerd in the background unless a container engine answers (hearth images engine)
	$(BIN)/hearth images engine

.PHONY: images
images: install ## Hearth's base image from Debian's packages (hearth images base: debootstrap, no hub)
	$(BIN)/hearth images base

.PHONY: containerize
containerize: install ## The five images (gateway, features, model, monolith; worker: Prefect's, with Hearth's flows) on the base: hearth containerize
	$(BIN)/hearth containerize

.PHONY: bench
bench: install ## Full serving benchmark (hearth bench, ~15 min on 2 cores; wrk cross-check): floor, mlflow, BentoML, monolith, microservices, two workers, Redis store, batching, rollback → reports/bench.*
	$(BIN)/hearth bench

.PHONY: soak
soak: install ## Soak test (hearth soak, ~13 min): the monolith at 80 % of its measured capacity for 10 min → reports/soak.*
	$(BIN)/hearth soak --duration $(or $(DURATION),600)

.PHONY: repro
repro: install ## Reproduce the DVC pipeline (dvc repro)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

.PHONY: bench-pipeline
bench-pipeline: install ## ETL and training benchmarks (10^5, 10^6, 10^7 rows; takes a while) → reports/bench_pipeline.*
	$(BIN)/python benchmarks/bench_pipeline.py

.PHONY: bench-rollout
bench-rollout: install ## The canary on generated traffic, no servers (200 paired rollouts per challenger, 40 before/unpaired; ~15 min on 2 cores; WORKERS=2) → reports/bench_rollout.*
	$(BIN)/python -m hearth.bench.rollout_sim --workers $(or $(WORKERS),2)

.PHONY: up
up: install ## The whole stack: Prefect (:4200) + worker + deployments, MLflow (:5000), serving (:3000)
	$(BIN)/hearth up --topology $(or $(TOPOLOGY),monolith)

.PHONY: down
down: install ## Stop what `make up` started
	$(BIN)/hearth down

.PHONY: up-containers
up-containers: install ## The stack as containers (deploy/compose.yaml on the local engine; TOPOLOGY=microservices|monolith, GPU=1 for the model's GPU)
	$(BIN)/hearth up --containers --topology $(or $(TOPOLOGY),microservices) $(if $(GPU),--gpu)

.PHONY: stack-images
stack-images: ## The images of deploy/compose.yaml's PostgreSQL + Redis (hearth/services) and MLflow + Prefect (hearth/stack), on HEARTH_BASE_IMAGE (no hub)
	@set -e; ctx=$$(mktemp -d); trap 'rm -rf "$$ctx"' EXIT; \
	cp deploy/images/* "$$ctx"/; \
	sed -e 's/ --hash=.*//' -e 's/+cpu//' requirements.lock > "$$ctx/constraints.txt"; \
	base=$${HEARTH_BASE_IMAGE:-hearth/base:bookworm-py3.11}; \
	for image in services stack; do \
		echo "==> hearth/$$image:latest from $$base"; \
		docker build -q --build-arg HEARTH_BASE_IMAGE=$$base -t hearth/$$image:latest \
			-f "$$ctx/$$image.Dockerfile" "$$ctx"; \
	done

.PHONY: test-containers
test-containers: install ## Opt-in, not in `make test`: the Compose stack for real (tests/containers; needs dockerd and the images: see README "With containers")
	HEARTH_CONTAINER_TESTS=1 $(BIN)/pytest tests/containers -v -s

.PHONY: mlflow-ui
mlflow-ui: install ## MLflow UI on http://127.0.0.1:5000 over Hearth's tracking store
	$(BIN)/hearth ui mlflow

.PHONY: prefect-ui
prefect-ui: install ## Prefect UI on http://127.0.0.1:4200 over Hearth's Prefect home
	$(BIN)/hearth ui prefect

.PHONY: lock
lock: ## Re-lock requirements.lock with sha256 hashes (keeps locked versions; UPGRADE=1 re-resolves all)
	rm -rf /tmp/hearth-lock && $(PYTHON) -m venv /tmp/hearth-lock
	@set -o pipefail; /tmp/hearth-lock/bin/pip install -q pip==$(PIP_VERSION) $(PIP_QUIET)
	@set -o pipefail; $(PYTHON) tools/lock.py --pip /tmp/hearth-lock/bin/pip \
		--pip-version $(PIP_VERSION) $(if $(UPGRADE),--upgrade) $(PIP_QUIET)
	rm -rf /tmp/hearth-lock

.PHONY: clean
clean: ## Remove Hearth's state (.hearth), generated data and reports; keeps .venv
	rm -rf .hearth data/raw data/processed data/quarantine data/reference reports/*.json reports/*.png
