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
	$(BIN)/python -m fednode.tensors.native
	touch $(STAMP)

# The network on 127.0.0.1: a devchain, three hospital daemons, 3 federated rounds (under 3 minutes
# on 2 cores). `$(BIN)/python -m fednode.demo --local` is the single-node walkthrough.
demo: $(STAMP)
	$(BIN)/python -m fednode.demo

# npm's @ipld/car, pinned in package-lock.json: the independent CAR reader and writer the interop
# tests (tests/workflows/test_carfiles.py) check fednode against. `make demo` needs no node.
NODE_STAMP := node_modules/.installed
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# Two workers (pytest-xdist), a test file per worker at a time (module fixtures are built once); the
# slowest tests are listed at the end so that a slow newcomer is seen. A worker that crashes (a
# segfault) ends the run with that error at once: restarted workers once left the run hanging.
test: $(STAMP) $(NODE_STAMP) lint
	$(BIN)/python -m pytest tests -n 2 --dist loadfile --durations=25 --max-worker-restart=0

# ruff (style, imports, complexity, unused noqa) and mypy (types of fednode/, protocol/, cli/)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# Flower is a bench-only dependency with a heavy tree: it lives in its own venv.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: pyproject.toml
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --disable-pip-version-check numpy zstandard ziglang==0.17.1 'flwr>=1.8'
	touch $@

# ZipNN (the reference for lossless model compression) imports torch: its venv reuses .venv's
# packages (torch CPU, numpy) through a .pth file and builds zipnn alone, so no torch is downloaded.
ZIPNN_VENV := .venv-zipnn
$(ZIPNN_VENV)/.installed: $(STAMP)
	test -x $(ZIPNN_VENV)/bin/python || $(BIN)/python -m venv $(ZIPNN_VENV)
	$(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
		"$$($(ZIPNN_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/fednode-venv.pth"
	$(ZIPNN_VENV)/bin/python -m pip install -q --disable-pip-version-check setuptools wheel
	$(ZIPNN_VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation zipnn==0.5.4
	touch $@

bench: $(STAMP) $(BENCH_VENV)/.installed $(ZIPNN_VENV)/.installed
	$(BIN)/python bench/bench_commit.py
	$(ZIPNN_VENV)/bin/python bench/bench_lossless.py
	$(BENCH_VENV)/bin/python bench/bench_merge.py
	$(BIN)/python bench/bench_chain.py

clean:
	rm -rf build .pytest_cache
