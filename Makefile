# `make test` and `make bench` do all set-up on a fresh machine: a virtualenv with
# torch 2.13.0 (the CPU build), the build tools, and fastwn built against that torch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION := 2.13.0
BUILD_DEPS := torch==$(TORCH_VERSION) scikit-build-core>=0.10 cmake>=3.24 ninja
STAMP := $(VENV)/.fastwn-deps

.PHONY: install test bench cuda-check wheel clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(BUILD_DEPS)
	touch $@

# --no-build-isolation: build against the torch in the venv, never a downloaded one.
install: $(STAMP)
	$(PY) -m pip install -q --no-build-isolation ".[test]" torch==$(TORCH_VERSION)

test: install
	FASTWN_REQUIRE_EXTENSION=1 $(PY) -m pytest -q tests

bench: install
	FASTWN_REQUIRE_EXTENSION=1 $(PY) -m fastwn bench --json benchmarks/results/cpu-latest.json

clean:
	rm -rf build dist $(VENV)
