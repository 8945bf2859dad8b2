# Two entry points for a fresh machine: `make run` and `make test` (see README.md).
# Each creates .venv when missing and (re)installs the package when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: run test test-fast report ui clean-venv gpu-carry gpu-check

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## Train the paper LeNet-5 on MNIST, tracked in ./mlflow.db (extra Hydra overrides: make run ARGS="...")
run: $(STAMP)
	$(BIN)/python run.py $(ARGS)

## Check the code uses public APIs only (ruff, configured in pyproject.toml), then run the test suite (CI sets MNIST_ROOT=../shared/data);
## the 15 longest tests are listed at the end, so every CI log shows where the suite's time goes
test: $(STAMP)
	$(BIN)/ruff check
	$(BIN)/python -m pytest --durations=15 $(PYTEST_ARGS)

## The fast tier for day-to-day work: every test not marked slow (no training subprocesses)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

## Summarise an experiment's runs into tables and plots (make report ARGS="--experiment NAME")
report: $(STAMP)
	$(BIN)/python -m analysis.report $(ARGS)

## Browse every run in the local store
ui: $(STAMP)
	@echo "open http://127.0.0.1:5000 and click Model training at the top left before an experiment (README.md, The MLflow UI)"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db

clean-venv:
	rm -rf $(VENV)

# The GPU check (docs/gpu-check.md). The device machine's image has torch but not Hydra or MLflow:
# they travel as wheels for its Python 3.12, with MNIST, in .gpu-carry/ (git-ignored).
GPU_CARRY    := .gpu-carry
GPU_PYTHON   ?= python3
GPU_REQUIREMENTS := benchmarks/gpu_requirements.txt
GPU_PLATFORMS := --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
	--platform manylinux2014_x86_64 --platform manylinux1_x86_64

## Fetch what the GPU check carries to the device machine: the wheels of benchmarks/gpu_requirements.txt, MNIST packed
gpu-carry:
	rm -rf $(GPU_CARRY) && mkdir -p $(GPU_CARRY)/wheels
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $(GPU_PLATFORMS) \
		-d $(GPU_CARRY)/wheels $$(grep -Ev '^(#|$$|antlr4)' $(GPU_REQUIREMENTS))
	$(PYTHON) -m pip wheel --quiet --no-deps -w $(GPU_CARRY)/wheels $$(grep -E '^antlr4' $(GPU_REQUIREMENTS))
	tar -czf $(GPU_CARRY)/MNIST.tar.gz -C $${MNIST_ROOT:-../shared/data} MNIST/raw
	@echo "wheels: $$(ls $(GPU_CARRY)/wheels | wc -l) files, $$(cat $(GPU_CARRY)/wheels/*.whl | wc -c) bytes; MNIST: $$(wc -c < $(GPU_CARRY)/MNIST.tar.gz) bytes"
	@echo "working tree (tracked): $$(git ls-files -z | xargs -0 cat | wc -c) bytes; with untracked, not ignored: $$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 cat | wc -c) bytes (limit with the carried: 64 MiB)"

## The GPU check, on a machine with a GPU: results/gpu_check.{md,csv,log} (dry run: make gpu-check ARGS="--device cpu --tiny --out /tmp/x")
gpu-check:
	GPU_PYTHON=$(GPU_PYTHON) bash benchmarks/gpu_check.sh $(ARGS)
