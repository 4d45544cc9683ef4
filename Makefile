# ctp: `make run` (the pipeline on the embedded sample data) and `make test` are all a newcomer needs.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export CTP_STORE ?= ./.ctp-store

.PHONY: help install run compile compile-golden test test-fast bench lint format clean
help:  ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar off -e '.[dev]'
	$(BIN)/python -m pip check
	touch $@

install: $(STAMP)  ## create .venv and install ctp with its dev tools

run: install  ## seed sample data if the store is empty, then run the pipeline locally (2-process DDP)
	$(BIN)/ctp data seed --if-empty
	$(BIN)/ctp run --nproc-per-node 2

compile: install  ## write the KFP pipeline YAML to dist/
	$(BIN)/ctp compile -o dist/continuous_training.yaml

compile-golden: install  ## rewrite tests/pipelines/golden/continuous_training.yaml after a deliberate IR change
	$(BIN)/python -m tests.pipelines.test_golden

lint: install  ## ruff: lint and format check (seconds; `make test` runs it first)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install  ## ruff: fix what can be fixed and format
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint  ## lint, then the whole test suite
	$(BIN)/python -m pytest

test-fast: lint  ## lint, then everything but the slow (whole-pipeline, multi-process) tests
	$(BIN)/python -m pytest -m "not slow"

bench: install  ## benchmarks: ratios measured side by side in one run
	$(BIN)/python -m tests.benchmarks.run

clean:  ## remove local store, runs and build outputs (keeps .venv)
	rm -rf .ctp-store .ctp-runs dist

-include images/images.mk
