# The two commands of the README: `make demo` and `make test`.
# Both set up what they need on a fresh Debian/Ubuntu machine: the Debian packages, then .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: demo test test-fast lint bench image system-deps venv bytecode clean

# The whole story on local servers: etcd, ClickHouse, S3, SMTP; two backups; a drill with every fault.
demo: system-deps venv bytecode
	$(BIN)/lifeboat demo $(DEMO_ARGS)

test: system-deps venv lint bytecode
	$(BIN)/pytest $(PYTEST_ARGS)

# The unit tests alone: no servers, a few seconds.
test-fast: venv bytecode
	$(BIN)/pytest -m "not integration" $(PYTEST_ARGS)

# Benchmarks: each prints Lifeboat against the bare tool doing the same work, measured in the same run.
bench: system-deps venv bytecode
	@for script in tests/bench/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done
	@echo "== tests/bench/bench_s3.py --scenario small"; $(BIN)/python tests/bench/bench_s3.py --scenario small

# The container image (deploy/docker/Dockerfile) from a wheelhouse built here; docker, else podman.
# BASE_IMAGE=... for another Debian bookworm base with Python 3.11; IMAGE=... for the tag.
IMAGE ?= lifeboat:0.1.0
BASE_IMAGE ?= python:3.11-slim-bookworm
image: venv
	IMAGE=$(IMAGE) BASE_IMAGE=$(BASE_IMAGE) PYTHON=$(BIN)/python bash deploy/docker/build.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# The bytecode of this tree, as `pip install` writes it for an installed Lifeboat. An editable install
# writes none, and where PYTHONDONTWRITEBYTECODE is set (it is on this project's machines) every
# `lifeboat` that a test, the demo or a bench starts compiled each module again: 0.2 s of each start.
# Only stale files are compiled again (0.06 s when none is).
bytecode: venv
	$(BIN)/python -m compileall -q backup lifeboat policies drills tests

# etcd 3.4 and ClickHouse 18.16 from Debian, installed without starting their services.
system-deps:
	@bash .ci/system-deps.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
