# Refund Item Classifier — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

RIC := $(PY) -m ric
ARGS ?=

help: ## List the targets (the stage targets run `ric <command> $(ARGS)`; `ric <command> --help` lists the flags)
	@awk 'BEGIN{FS=":.*?## "} /^##@ /{printf "\n%s\n", substr($$0, 5)} /^[a-zA-Z_-]+:.*?## /{printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

##@ The product

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

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
	echo "   dashboard: http://127.0.0.1:$(DEMO_PORT)/    MLflow UI: make ui (or: $(PY) -m ric ui)"
	$(PY) model_serving/app.py --port $(DEMO_PORT)

##@ Stages, one at a time (ARGS="--flag value" passes flags; e.g. make train ARGS="--epochs 2 --limit 20000")
acquire: setup ## 1. Fashion-MNIST -> data/raw (official download, or FASHION_MNIST_DIR)
	$(RIC) acquire $(ARGS)

ingest: setup ## 1. data/raw -> <STORAGE_URI>/raw and its manifest
	$(RIC) ingest $(ARGS)

process: setup ## 2. <STORAGE_URI>/raw -> processed/{train,val,test}.npz
	$(RIC) process $(ARGS)

render-photos: setup ## 3. the photo benchmark into data/cache (training renders what is missing)
	$(RIC) render-photos $(ARGS)

train: setup ## 3. train, log to MLflow, register (challenger; champion if at least as good)
	$(RIC) train $(ARGS)

registry: setup ## 3. the registered versions (ARGS="promote 3", ARGS=rollback, ARGS=champion)
	$(RIC) registry $(if $(ARGS),$(ARGS),list)

serve: setup ## 4. the prediction API (granian) on 127.0.0.1:5001
	$(RIC) serve $(ARGS)

simulate-night: setup ## 5. a night of returns into incoming/<today>/ (ARGS="--count 1000")
	$(RIC) simulate-night $(if $(ARGS),$(ARGS),--count 1000)

batch: setup ## 5. the nightly batch job, now (scores what the champion has not scored yet)
	$(RIC) batch $(ARGS)

labels: setup ## 6. people's labels: ARGS="import needs_review.csv --who ann" (a night's CSV with a label column), or summary
	$(RIC) labels $(if $(ARGS),$(ARGS),summary)

performance: setup ## 6. accuracy over time: expected and measured per night (writes it to the nights' MLflow runs)
	$(RIC) performance $(ARGS)

retrain-policy: setup ## 6. retrain (train --finetune) only when due: new labels, degraded accuracy or drift; says why
	$(RIC) retrain-policy $(ARGS)

##@ Operations
settings: setup ## Every variable the project reads, its effective value and meaning
	@$(RIC) settings

ui: setup ## The MLflow UI of the tracking store (local store: http://127.0.0.1:5000, until Ctrl-C)
	$(RIC) ui $(ARGS)

night: setup ## Simulate a night of 10,000 returns and score it with the nightly batch job
	$(PY) -m batch_prediction.simulate_night --count 10000
	$(PY) -m batch_prediction.batch_predict

crontab: setup ## Print the crontab line of the nightly batch job
	@$(PY) -m batch_prediction.batch_predict --print-crontab

retrain: setup ## Train a new model now (registered as challenger; becomes champion if at least as accurate)
	$(PY) -m model_training.train $(TRAIN_ARGS)

drift-eval: setup ## Measure the drift detector (false alarms, power per shift) on the champion; logs to MLflow
	$(PY) -m monitoring.evaluate_drift --log-mlflow

##@ Benchmarks
bench-pipeline: setup ## Benchmark the data pipeline (70,000 images; local store and a moto server; seed baseline)
	nice -n 10 $(PY) benchmarks/bench_pipeline.py

bench-serving: setup ## Benchmark the API against a seed-style server (installs wrk if root)
	$(PY) benchmarks/bench_serving.py

bench-batch: setup ## Benchmark the nightly batch (20k/70k stored PNGs, seed-style baseline)
	nice -n 10 $(PY) benchmarks/bench_batch.py

bench-training: setup ## Benchmark a full default training run (accuracy, time, FLOPs, inference images/s)
	$(PY) benchmarks/bench_training.py

TTA_MODELS ?= models:/refund-item-classifier@champion
bench-tta: setup ## Test-time views vs the network alone on trained models (TTA_MODELS=<model URIs>; default champion)
	$(PY) benchmarks/bench_tta.py $(TTA_MODELS)

bench-learning-loop: setup ## Simulate 10 warehouse nights with people labelling and the retrain policy (~1 h)
	nice -n 10 $(PY) benchmarks/bench_learning_loop.py

architecture: setup ## Regenerate architecture.png from docs/architecture.dot (needs Graphviz; installed with apt-get when root)
	@command -v dot >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null; } \
	  || { echo "Graphviz 'dot' is missing: apt-get install -y graphviz (or brew install graphviz)" >&2; exit 2; }
	$(PY) docs/render_architecture.py

##@ Development
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

clean: ## Remove generated state (data/, MLflow store, caches) but keep .venv
	rm -rf data mlruns mlartifacts mlflow.db .pytest_cache .ruff_cache

.PHONY: help setup test browser lint format demo acquire ingest process render-photos train registry serve simulate-night batch \
	labels performance retrain-policy settings ui night crontab bench-pipeline bench-serving bench-batch bench-training bench-tta bench-learning-loop \
	drift-eval retrain architecture clean
