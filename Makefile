# `make run`: set up .venv and run the default pipeline on bundled data.
# `make test`: set up .venv if missing and run the tests.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# Modules are compiled when first imported (see --no-compile below); with bytecode writing off,
# every process of a run or of the tests would compile torch, Prefect and MLflow again (2-3x slower).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: run test ui clean

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	# --no-compile: byte-compiling every installed module took 70 of the install's 95 s; Python
	# compiles the modules a command imports when it first imports them.
	$(BIN)/python -m pip install --quiet --no-compile -c constraints.txt -e ".[test,bench]"
	touch $@

run: $(BIN)/.installed
	$(BIN)/nas pipeline

test: $(BIN)/.installed
	$(BIN)/python -m pytest

ui: $(BIN)/.installed
	$(BIN)/nas ui

clean:
	rm -rf $(VENV) .prefect data metrics/*.json plots reports mlflow/mlflow.db mlflow/artifacts
