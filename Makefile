# Two commands do all set-up: `make run` and `make test`. Everything lives in .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint unit integration bench soak install clean mutate

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,local,rocksdb]'
	touch $(STAMP)

install: $(STAMP)

## Start a local broker, worker and sink, replay examples/demo.jsonl, print what landed, stop.
run: $(STAMP)
	$(BIN)/rating demo examples/demo.jsonl

## Lint (ruff, mypy), unit tests (pure core), then integration tests (real Tansu broker, faust
## subprocesses, chDB).
test: lint
	$(BIN)/python -m pytest tests/unit -q
	$(BIN)/python -m pytest tests/integration -q

## ruff (lint and format, lines of at most 100 columns) and mypy, on the whole tree (config in
## pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## Benchmark: prints a table and writes bench-results/bench.json (ratios against a same-run baseline).
bench: $(STAMP)
	$(BIN)/rating bench

## Soak: the embedded pipeline for SOAK_MINUTES (30) at SOAK_RATE events/s; samples every process's
## memory, lag and warnings, then compares ClickHouse with `rating simulate` row for row. Writes
## bench-results/soak.json. Not part of `make test`. The embedded broker slows down as it fills
## (README "Long runs"): 30 minutes at half the burst rate (SOAK_RATE= empty) do not drain on it
## on a 2-core machine; 35 events/s do.
SOAK_MINUTES ?= 30
SOAK_RATE ?= 35
soak: $(STAMP)
	SOAK_RATE=$(SOAK_RATE) $(BIN)/python -m streams.bench.soak --minutes $(SOAK_MINUTES)

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration -q

## Mutation testing of the pure core (mutmut; config in pyproject.toml [tool.mutmut]). Slow: not
## part of `make test`. Runs in a scratch copy (.run/mutate) of the work tree; results are kept
## there, so a second run only re-tests what changed. MUTATE_ARGS passes mutant names to mutmut run.
MUTATE_DIR := .run/mutate
mutate: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,local,mutate]'
	mkdir -p $(MUTATE_DIR)
	rm -rf $(MUTATE_DIR)/streams $(MUTATE_DIR)/tests $(MUTATE_DIR)/schemas $(MUTATE_DIR)/examples
	cp -r streams tests schemas examples pyproject.toml $(MUTATE_DIR)/
	find $(MUTATE_DIR) -name __pycache__ -prune -exec rm -rf {} +
	cd $(MUTATE_DIR) && HYPOTHESIS_PROFILE=mutate $(CURDIR)/$(BIN)/mutmut run --max-children $${MUTATE_JOBS:-2} $(MUTATE_ARGS)
	cd $(MUTATE_DIR) && $(CURDIR)/$(BIN)/mutmut export-cicd-stats >/dev/null 2>&1; \
	  $(CURDIR)/$(BIN)/mutmut results > results.txt; cat results.txt | tail -n 60; \
	  echo "full list: $(MUTATE_DIR)/results.txt"

clean:
	rm -rf .run .pytest_cache build *.egg-info
