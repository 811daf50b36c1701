PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench lint clean compat

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# the compiled kernels are built by the install: rebuild when their sources change
KERNEL_SRC := setup.py $(wildcard src/crowdphot/core/kernels/_src/*)

$(VENV)/.installed-base: pyproject.toml $(KERNEL_SRC) | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[plot]"
	touch $@

$(VENV)/.installed-test: pyproject.toml $(KERNEL_SRC) | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[plot,test,bench]"
	touch $@ $(VENV)/.installed-base

demo: $(VENV)/.installed-base
	$(BIN)/python -m crowdphot demo --out demo_output

test: $(VENV)/.installed-test
	$(BIN)/python -m ruff check src tests bench
	$(BIN)/lint-imports
	$(BIN)/python compat/run_compat.py
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed-test
	$(BIN)/python bench/run.py

compat: $(VENV)/.installed-test
	$(BIN)/python compat/run_compat.py

lint: $(VENV)/.installed-test
	$(BIN)/python -m ruff check src tests bench

clean:
	rm -rf $(VENV) demo_output build *.egg-info src/*.egg-info
