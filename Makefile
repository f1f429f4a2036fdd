# The two commands of the README: `make test` and (with the service issue) `make demo`.
# Both set up what they need on a fresh Debian/Ubuntu machine: the Debian packages, then .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: test test-fast lint system-deps venv clean

test: system-deps venv lint
	$(BIN)/pytest $(PYTEST_ARGS)

# The unit tests alone: no servers, a few seconds.
test-fast: venv
	$(BIN)/pytest -m "not integration" $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# etcd 3.4 and ClickHouse 18.16 from Debian, installed without starting their services.
system-deps:
	@bash .ci/system-deps.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
