# `make run`: set up .venv and run the default pipeline on bundled data.
# `make test`: set up .venv if missing and run the tests.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# uv installs without byte-compiling: modules are compiled when first imported. With bytecode
# writing off, every process of a run or of the tests would compile torch, Prefect and MLflow again.
unexport PYTHONDONTWRITEBYTECODE
# Wheels to prefer where the folder exists: this machine keeps torch's CPU build there. From PyPI
# the pinned torch is the CUDA build, 4 GB more to install and no faster on a CPU.
WHEELS ?= /opt/wheels

.PHONY: run test ui clean

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# uv installs the pinned set in about 15 s, where pip took 95 s.
	$(BIN)/python -m pip install --quiet "uv==0.13.9"
	$(BIN)/uv pip install --quiet --python $(BIN)/python --system-certs $(addprefix --find-links ,$(wildcard $(WHEELS))) \
		-c constraints.txt -e ".[test,bench]"
	touch $@

run: $(BIN)/.installed
	$(BIN)/nas pipeline

test: $(BIN)/.installed
	$(BIN)/python -m pytest

ui: $(BIN)/.installed
	$(BIN)/nas ui

clean:
	rm -rf $(VENV) .prefect data metrics/*.json plots reports mlflow/mlflow.db mlflow/artifacts
