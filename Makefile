# Two commands on a fresh clone: `make run` and `make test`.
# Stages run `python stages/...`: the venv's bin comes first on PATH so that python is ours.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench lint clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

# `data/` is the user's collection, tracked by data.dvc; a fresh clone has no DVC cache to
# check it out from, and dvc refuses to run with the dependency missing, so make sure it exists.
run: $(STAMP)
	mkdir -p data
	PATH="$(abspath $(BIN)):$$PATH" dvc repro

test: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" python -m pytest

bench: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" python -m bench

lint: $(STAMP)
	$(BIN)/ruff check src stages tests bench

clean:
	rm -rf work metrics plots mlflow.db
