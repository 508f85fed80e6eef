# Vigil — every target creates .venv when it is missing.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= examples/demo.yaml
PROTOS := $(wildcard protos/vigil/v1/*.proto)

.PHONY: install run test proto proto-check lint bench fuzz clean

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/vigil up --config $(CONFIG)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

proto: $(STAMP)
	$(PY) -m services.core.protogen protos

proto-check: $(STAMP)
	$(PY) -m services.core.protogen protos --check

lint: $(STAMP)
	$(VENV)/bin/ruff check services minion tests bench
	$(VENV)/bin/ruff format --check services minion tests bench
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

# The property tests of tests/fuzz/ with many examples (the suite runs 60 each).
VIGIL_FUZZ_EXAMPLES ?= 2000
fuzz: $(STAMP)
	VIGIL_FUZZ_EXAMPLES=$(VIGIL_FUZZ_EXAMPLES) $(PY) -m pytest tests/fuzz -p no:cacheprovider -o timeout=0 $(PYTEST_ARGS)

clean:
	rm -rf .vigil .pytest_cache .mypy_cache .ruff_cache
