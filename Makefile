# Two commands for a newcomer: `make demo` and `make test`. Both set up from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test ui lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/datalog demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

ui: $(STAMP)
	DAGSTER_HOME=$$($(BIN)/datalog dagster-home) $(BIN)/dagster dev -h 127.0.0.1 -p 3000

bench: $(STAMP)
	$(BIN)/python benchmarks/run_benchmark.py

clean:
	rm -rf .datalog benchmarks/data
