# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv when missing.
# TORCH picks the PyTorch build: the default is the CPU build; GPU users install their CUDA
# build first (see README) or run e.g. `make demo TORCH=torch`.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
DEMO_OUT ?= demo-out

.PHONY: demo test test-all lint install clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test,medical,dev]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/funetgan demo --out $(DEMO_OUT) --overwrite

test: $(VENV)/.installed
	$(PY) -m pytest -q

# ruff (lint and format) and mypy, configured in pyproject.toml.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/mypy

test-all: $(VENV)/.installed
	$(PY) -m pytest -q -m "slow or not slow"

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
