# Two commands for a newcomer: `make serve` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install serve test bench bench-all lint-docker proto

$(BIN)/.heddle-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.heddle-installed

serve: install
	$(BIN)/heddle serve $(ARGS)

test: install
	$(BIN)/python -m pytest $(ARGS)

bench: install
	$(BIN)/python bench/gateway_overhead.py $(ARGS)

bench-all: install
	$(BIN)/python bench/run_all.py $(ARGS)

proto: install
	PATH=$(BIN):$$PATH tools/gen_proto.sh
