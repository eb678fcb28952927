# Two commands for a newcomer: `make serve` and `make test`. Both install into .venv first:
# serve only what serving needs; test adds the test extras (pytest, a Triton server, plotting).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Stamps: the serving install, and the test extras on top of it. A stamp older than
# pyproject.toml reinstalls, so `make serve` then `make test` adds the extras once.
SERVE_STAMP := $(BIN)/.heddle-installed
TEST_STAMP := $(BIN)/.heddle-test-installed

.PHONY: install install-test serve test test-fast lint bench bench-all proto

$(BIN)/python:
	@echo "== creating the virtual environment $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

# pip runs without --quiet on purpose: a first install takes a minute or more, and a silent one looks hung.
$(SERVE_STAMP): pyproject.toml | $(BIN)/python
	@echo "== installing heddle and what serving needs into $(VENV)"
	$(BIN)/python -m pip install -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	@echo "== installing heddle with its test extras into $(VENV) (pytest, a Triton server, plotting)"
	$(BIN)/python -m pip install -e '.[test]'
	touch $@ $(SERVE_STAMP)

install: $(SERVE_STAMP)

install-test: $(TEST_STAMP)

serve: install
	@echo "== starting heddle serve (a first run also builds the demo models, a line each)"
	$(BIN)/heddle serve $(ARGS)

# The suite runs the linters first: a few seconds, and a finding fails before two minutes of tests.
test: install-test lint
	$(BIN)/python -m pytest $(ARGS)

# While you work: the suite without the tests marked slow or triton (no tritonserver starts), no lint,
# on two worker processes (pytest-xdist). make test stays one process, as CI runs it.
test-fast: install-test
	$(BIN)/python -m pytest -q -m "not slow and not triton" -n 2 $(ARGS)

# ruff (pyproject's [tool.ruff]), mypy strict on scheduler/ and server/runtime/ (tools/typecheck.py),
# hadolint on the images.
lint: install-test
	$(BIN)/ruff check .
	$(BIN)/python tools/typecheck.py
	$(BIN)/hadolint docker/Dockerfile.*

bench: install-test
	$(BIN)/python -m bench.gateway_overhead $(ARGS)

bench-all: install-test
	$(BIN)/python -m bench.run_all $(ARGS)

proto: install-test
	PATH=$(BIN):$$PATH tools/gen_proto.sh
