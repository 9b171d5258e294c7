# Refund Item Classifier — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

setup: $(STAMP) ## Create .venv and install the project with its dependencies

test: setup ## Run the whole test suite (what CI runs)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup ## Lint and format-check with ruff
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup ## Format the code with ruff
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

demo: setup ## Run the main job end to end on the embedded defaults (DEMO_FAST=1 for a few-minute version)
	$(PY) -m data_ingestion.acquire
	$(PY) -m data_ingestion.ingest
	$(PY) -m data_processing.process

architecture: setup ## Regenerate architecture.png from docs/architecture.dot (needs Graphviz; installed with apt-get when root)
	@command -v dot >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null; } \
	  || { echo "Graphviz 'dot' is missing: apt-get install -y graphviz (or brew install graphviz)" >&2; exit 2; }
	$(PY) docs/render_architecture.py

clean: ## Remove generated state (data/, MLflow store, caches) but keep .venv
	rm -rf data mlruns mlartifacts mlflow.db .pytest_cache .ruff_cache

.PHONY: help setup test lint format demo architecture clean
