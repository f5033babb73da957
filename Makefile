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

RESULTS ?= benchmarks/results/latest
bench: install
	FASTWN_REQUIRE_EXTENSION=1 $(PY) -m fastwn bench --json $(RESULTS)-ops.json
	FASTWN_REQUIRE_EXTENSION=1 $(PY) -m fastwn bench --models --json $(RESULTS)-models.json

# A wheel for the torch in the venv (it requires that torch release).
wheel: $(STAMP)
	$(PY) -m pip wheel --no-build-isolation --no-deps . -w dist

# CUDA without a GPU or a CUDA torch (CI): the torch-free kernels are compiled for
# Ampere and Hopper, and the glue is compiled (syntax only) against the CPU torch's
# headers plus a stand-in for the one header only CUDA builds of torch generate.
CUDA_CHECK_DIR := build/cuda-check
CUDA_HOME ?= /usr/local/cuda
TORCH_INC = $(shell $(PY) -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'include'))")
cuda-check: $(STAMP)
	mkdir -p $(CUDA_CHECK_DIR)/include/c10/cuda/impl
	nvcc -std=c++20 -O3 -Xptxas -warn-spills -c csrc/cuda/kernels.cu -o $(CUDA_CHECK_DIR)/kernels.o \
	  -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
	printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > $(CUDA_CHECK_DIR)/include/c10/cuda/impl/cuda_cmake_macros.h
	$(CXX) -std=c++20 -fsyntax-only -I$(TORCH_INC) -I$(TORCH_INC)/torch/csrc/api/include \
	  -I$(CUDA_CHECK_DIR)/include -I$(CUDA_HOME)/include csrc/cuda/weight_norm.cpp

clean:
	rm -rf build dist $(VENV)
