# fednode: `make demo` runs the walkthrough, `make test` runs the tests.
# Both create or refresh .venv idempotently first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fednode-installed

.PHONY: demo test lint bench clean venv

venv: $(STAMP)

# torch first, pinned to the CPU build this machine kind keeps on disk, so no
# multi-GB CUDA build is ever downloaded; then the project with its dev extras.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	$(BIN)/python -m fednode.native
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m fednode.demo

test: $(STAMP)
	$(BIN)/python -m pytest tests

lint: $(STAMP)
	$(BIN)/ruff check .

# Flower is a bench-only dependency with a heavy tree: it lives in its own venv.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: pyproject.toml
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --disable-pip-version-check numpy zstandard ziglang==0.17.1 'flwr>=1.8'
	touch $@

bench: $(STAMP) $(BENCH_VENV)/.installed
	$(BIN)/python bench/bench_commit.py
	$(BENCH_VENV)/bin/python bench/bench_merge.py
	$(BIN)/python bench/bench_chain.py

clean:
	rm -rf build .pytest_cache
