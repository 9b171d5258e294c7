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

test: setup browser ## Run the whole test suite (what CI runs)
	$(PY) -m pytest $(PYTEST_ARGS)

browser: ## Install headless Chromium for the browser tests (Debian's package, when root with apt-get; else say so)
	@command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "==> installing Debian's chromium for the browser tests (apt-get)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "note: could not install chromium; the browser tests will be skipped (named at the end)"; \
	  else \
	    echo "note: no chromium and no root apt-get: the browser tests will be skipped (named at the end);" \
	         "install it with: sudo apt-get install -y chromium"; \
	  fi; }

lint: setup ## Lint and format-check with ruff
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup ## Format the code with ruff
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

DEMO_FAST ?=
DEMO_NIGHT ?= 1000
DEMO_PORT ?= 5001
# DEMO_FAST=1: a few-minute model (2 epochs on 20,000 images) instead of the full default training run.
TRAIN_ARGS ?= $(if $(DEMO_FAST),--epochs 2 --limit 20000,)

demo: setup ## Run the main job end to end on the embedded defaults, then serve the API (DEMO_FAST=1: few minutes)
	@echo "==> [1/8] Fashion-MNIST -> data/raw (official download with checksums, or FASHION_MNIST_DIR)"
	$(PY) -m data_ingestion.acquire
	@echo "==> [2/8] ingest data/raw -> <STORAGE_URI>/raw"
	$(PY) -m data_ingestion.ingest
	@echo "==> [3/8] process -> <STORAGE_URI>/processed and data/processed"
	$(PY) -m data_processing.process
	@echo "==> [4/8] photo benchmark: validation and test items rendered as warehouse photos (once; cached in data/cache)"
	@$(PY) -m model_training.registry champion || $(PY) -m model_training.render_photos
	@echo "==> [5/8] train, log to MLflow, register and promote (skipped while a champion exists: make retrain)"
	@$(PY) -m model_training.registry champion || $(PY) -m model_training.train $(TRAIN_ARGS)
	@echo "==> [6/8] simulate a night of returns ($(DEMO_NIGHT) photos into <STORAGE_URI>/incoming/<today>/, once a day)"
	$(PY) -m batch_prediction.simulate_night --count $(DEMO_NIGHT) --if-empty
	@echo "==> [7/8] nightly batch job (scores what the champion has not scored yet)"
	$(PY) -m batch_prediction.batch_predict
	@echo "==> [8/8] API on http://127.0.0.1:$(DEMO_PORT) (Ctrl-C stops it)"
	@img=$$(ls data/processed/test/*.png 2>/dev/null | head -n 1); \
	echo "   try:  curl -X POST -F \"file=@$$img\" http://127.0.0.1:$(DEMO_PORT)/predict"; \
	echo "         curl http://127.0.0.1:$(DEMO_PORT)/health"; \
	echo "         curl http://127.0.0.1:$(DEMO_PORT)/metrics"; \
	echo "         curl http://127.0.0.1:$(DEMO_PORT)/drift-status"; \
	echo "   dashboard: http://127.0.0.1:$(DEMO_PORT)/    MLflow UI: $(PY) -m mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db"
	$(PY) model_serving/app.py --port $(DEMO_PORT)

serve: setup ## Start the prediction API (granian) on 127.0.0.1:5001
	$(PY) model_serving/app.py

bench-pipeline: setup ## Benchmark the data pipeline (70,000 images; local store and a moto server; seed baseline)
	nice -n 10 $(PY) benchmarks/bench_pipeline.py

bench-serving: setup ## Benchmark the API against a seed-style server (installs wrk if root)
	$(PY) benchmarks/bench_serving.py

night: setup ## Simulate a night of 10,000 returns and score it with the nightly batch job
	$(PY) -m batch_prediction.simulate_night --count 10000
	$(PY) -m batch_prediction.batch_predict

crontab: setup ## Print the crontab line of the nightly batch job
	@$(PY) -m batch_prediction.batch_predict --print-crontab

bench-batch: setup ## Benchmark the nightly batch (20k/70k stored PNGs, seed-style baseline)
	nice -n 10 $(PY) benchmarks/bench_batch.py

bench-training: setup ## Benchmark a full default training run (accuracy, time, FLOPs, inference images/s)
	$(PY) benchmarks/bench_training.py

TTA_MODELS ?= models:/refund-item-classifier@champion
bench-tta: setup ## Test-time views vs the network alone on trained models (TTA_MODELS=<model URIs>; default champion)
	$(PY) benchmarks/bench_tta.py $(TTA_MODELS)

drift-eval: setup ## Measure the drift detector (false alarms, power per shift) on the champion; logs to MLflow
	$(PY) -m monitoring.evaluate_drift --log-mlflow

retrain: setup ## Train a new model now (registered as challenger; becomes champion if at least as accurate)
	$(PY) -m model_training.train $(TRAIN_ARGS)

architecture: setup ## Regenerate architecture.png from docs/architecture.dot (needs Graphviz; installed with apt-get when root)
	@command -v dot >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null; } \
	  || { echo "Graphviz 'dot' is missing: apt-get install -y graphviz (or brew install graphviz)" >&2; exit 2; }
	$(PY) docs/render_architecture.py

clean: ## Remove generated state (data/, MLflow store, caches) but keep .venv
	rm -rf data mlruns mlartifacts mlflow.db .pytest_cache .ruff_cache

.PHONY: help setup test browser lint format demo serve night crontab bench-pipeline bench-serving bench-batch bench-training bench-tta drift-eval retrain architecture clean
