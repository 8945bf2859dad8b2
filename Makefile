# Two entry points for a fresh machine: `make run` and `make test` (see README.md).
# Each creates .venv when missing and (re)installs the package when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: run test test-fast report ui clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## Train the paper LeNet-5 on MNIST, tracked in ./mlflow.db (extra Hydra overrides: make run ARGS="...")
run: $(STAMP)
	$(BIN)/python run.py $(ARGS)

## Check the code uses public APIs only (ruff, configured in pyproject.toml), then run the test suite (CI sets MNIST_ROOT=../shared/data)
test: $(STAMP)
	$(BIN)/ruff check
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## The fast tier for day-to-day work: every test not marked slow (no training subprocesses)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

## Summarise an experiment's runs into tables and plots (make report ARGS="--experiment NAME")
report: $(STAMP)
	$(BIN)/python -m analysis.report $(ARGS)

## Browse every run in the local store
ui: $(STAMP)
	@echo "open http://127.0.0.1:5000/#/?workflowType=machine_learning (MLflow's model-training view)"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db

clean-venv:
	rm -rf $(VENV)
