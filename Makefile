# The two entry points of the README. Both install everything into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export AREACAL_PRESET ?= demo

.PHONY: install build test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: pip takes the local CPU wheel instead of a multi-GB CUDA build
install: $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -e ".[dev]"

build: install
	$(BIN)/python -m jobs.build_cli

test: install
	$(BIN)/python -m pytest -q
