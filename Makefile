# ai-stack: `make install`, then `make serve`; `make test` runs lint, types and every test;
# `make test-fast` the same without the tests marked slow (the real default model, llama.cpp).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: install install-llamacpp serve test test-fast lint typecheck pytest pytest-fast clean bench bench-quick bench-deps

install:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: an open range would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	# Assemble and convert the embedded default model once, so `make serve` starts in seconds.
	$(VENV)/bin/ai-stack prepare

# The llama.cpp engine (optional): llama-cpp-python compiles llama.cpp from source (~20 min on 2 cores; pip's
# wheel cache makes later installs fast). For a GPU build pass CMAKE_ARGS, e.g.
#   CMAKE_ARGS="-DGGML_CUDA=on" make install-llamacpp     (NVIDIA CUDA)
#   CMAKE_ARGS="-DGGML_METAL=on" make install-llamacpp    (Apple Metal)
install-llamacpp:
	$(PIP) install -e '.[dev,llamacpp]'

serve:
	$(VENV)/bin/ai-stack serve

lint:
	$(VENV)/bin/ruff check ai_stack tests

typecheck:
	$(VENV)/bin/mypy

pytest:
	$(PY) -m pytest -q -p no:cacheprovider

pytest-fast:
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

test: lint typecheck pytest

test-fast: lint typecheck pytest-fast

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# Benchmarks (bench/): never part of `make install` or `make test`. Results go to bench/results/.
bench:
	$(PIP) install -q -e '.[dev,bench]'
	$(PY) -m bench --full

bench-quick:
	$(PIP) install -q -e '.[dev,bench]'
	$(PY) -m bench --quick

# llama.cpp baseline: builds from source (~10+ min) unless pip's wheel cache already holds the wheel.
bench-deps:
	$(PIP) install llama-cpp-python==0.3.36
