# The two commands. Each creates .venv when missing and installs the project into it.
# On a machine without a GPU, torch is pinned to the CPU build (see ENV notes in README).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test install clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0 -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/stagent-ray run --config configs/tiny.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not gpu" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python scripts/bench_generate.py

clean:
	rm -rf $(VENV) runs
