# `make test` and `make bench` do all set-up on a fresh machine: a virtualenv with
# torch 2.13.0 (the CPU build), the build tools, and fastwn built against that torch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION := 2.13.0
# Quoted: unquoted, the shell reads ">=" as a redirect (and drops the version floors).
BUILD_DEPS := "torch==$(TORCH_VERSION)" "scikit-build-core>=0.10" "cmake>=3.24" ninja
STAMP := $(VENV)/.fastwn-deps
PYTEST := FASTWN_REQUIRE_EXTENSION=1 HF_HUB_OFFLINE=1

.PHONY: install test bench torch-ab wheel cuda-install cuda-test wheel-cuda sanitize gpu-proof clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(BUILD_DEPS)
	touch $@

# --no-build-isolation: build against the torch in the venv, never a downloaded one.
install: $(STAMP)
	$(PY) -m pip install -q --no-build-isolation ".[test]" "torch==$(TORCH_VERSION)"

test: install
	$(PYTEST) $(PY) -m pytest -q tests

RESULTS ?= benchmarks/results/latest
bench: install
	FASTWN_REQUIRE_EXTENSION=1 $(PY) -m fastwn bench --json $(RESULTS)-ops.json
	FASTWN_REQUIRE_EXTENSION=1 $(PY) -m fastwn bench --models --json $(RESULTS)-models.json
	FASTWN_REQUIRE_EXTENSION=1 HF_HUB_OFFLINE=1 $(PY) -m fastwn bench --dora --json $(RESULTS)-dora.json

# The CMake project configured by hand, outside pip, for the CPU only (torch-ab, sanitize).
CONFIGURE_CPU = $(VENV)/bin/cmake -S . -G Ninja -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja) \
  -DFASTWN_CUDA=OFF -DSKBUILD_PROJECT_VERSION=0.1.0 -DPython_EXECUTABLE=$(abspath $(PY))

# An instrument: torch's CPU kernels and fastwn's timed in one C++ process
# (benchmarks/cpp/torch_ab.cpp says how to run it): build/ab/torch_ab.
AB_DIR := build/ab
torch-ab: install
	$(CONFIGURE_CPU) -B $(AB_DIR) -DCMAKE_BUILD_TYPE=Release
	$(VENV)/bin/cmake --build $(AB_DIR) --target torch_ab

# A wheel for the torch in the venv (it requires that torch release).
wheel: $(STAMP)
	$(PY) -m pip wheel --no-build-isolation --no-deps . -w dist

# ---- CUDA, without a GPU: the real build against PyTorch's CUDA 13 release ----
# Its own virtualenv; FASTWN_CUDA=ON fails the build if CUDA cannot be built.
# FASTWN_CUDA_ARCHS overrides the architecture list CMakeLists.txt sets.
CUDA_VENV ?= .venv-cuda
CUDA_PY := $(CUDA_VENV)/bin/python
CUDA_TORCH_VERSION := 2.14.1
CUDA_STAMP := $(CUDA_VENV)/.fastwn-deps
# Its own CMake build directory: the CPU build's has the same wheel tag.
CUDA_ENV := FASTWN_CUDA=ON SKBUILD_BUILD_DIR=build/cuda

$(CUDA_STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_PY) -m pip install -q "torch==$(CUDA_TORCH_VERSION)" "scikit-build-core>=0.10" "cmake>=3.24" ninja
	touch $@

cuda-install: $(CUDA_STAMP)
	$(CUDA_ENV) $(CUDA_PY) -m pip install -q --no-build-isolation ".[test]" "torch==$(CUDA_TORCH_VERSION)"

# The CUDA build imports, registers CUDA kernels and passes the whole CPU suite (the
# wheel test then builds, installs and checks a CUDA wheel).
cuda-test: cuda-install
	$(CUDA_ENV) $(PYTEST) $(CUDA_PY) -m pytest -q tests

wheel-cuda: $(CUDA_STAMP)
	$(CUDA_ENV) $(CUDA_PY) -m pip wheel --no-build-isolation --no-deps . -w dist

# ---- the CPU extension and the C++ kernel tests under ASan and UBSan, every ISA ----
SANITIZE_DIR := build/sanitize
SANITIZE_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g
# The sanitizer runtime must come first in a process that did not link it (python); with
# ASan preloaded, libstdc++ must be too, or the first C++ exception aborts.
SANITIZE_PRELOAD = $(shell $(CXX) -print-file-name=libasan.so) $(shell $(CXX) -print-file-name=libstdc++.so)
sanitize: install
	$(CONFIGURE_CPU) -B $(SANITIZE_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  "-DCMAKE_CXX_FLAGS=$(SANITIZE_FLAGS)" "-DCMAKE_SHARED_LINKER_FLAGS=$(SANITIZE_FLAGS)"
	$(VENV)/bin/cmake --build $(SANITIZE_DIR)
	rm -rf $(SANITIZE_DIR)/pkg && mkdir -p $(SANITIZE_DIR)/pkg && cp -r python/fastwn $(SANITIZE_DIR)/pkg/
	cp $(SANITIZE_DIR)/_C*.so $(SANITIZE_DIR)/_build_meta.py $(SANITIZE_DIR)/pkg/fastwn/
	LD_PRELOAD="$(SANITIZE_PRELOAD)" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 PYTHONPATH=$(abspath $(SANITIZE_DIR)/pkg) \
	  FASTWN_SANITIZE_FLAGS="$(SANITIZE_FLAGS)" $(PYTEST) $(PY) -m pytest -q -p no:cacheprovider tests \
	  --ignore=tests/test_wheel.py --ignore=tests/test_transformers.py

# ---- the one command for a lent GPU machine (tools/gpu_proof.sh says what it runs) ----
gpu-proof:
	bash tools/gpu_proof.sh

clean:
	rm -rf build dist $(VENV) $(CUDA_VENV)
