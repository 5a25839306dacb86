# autoresearch-farm: every target does its own set-up (`make install` is implied).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The torch wheel installed first on a machine without a CUDA GPU (a CPU build where one is at hand).
CPU_TORCH ?= torch==2.13.0
PROFILE ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo h100 || echo cpu-tiny)
RUN_DIR ?= runs/try-$(PROFILE)

.PHONY: install test test-fast farm prepare doctor lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@if ! (command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1); then \
		echo "no CUDA GPU found: installing a CPU torch ($(CPU_TORCH)) first"; \
		$(BIN)/pip install --quiet $(CPU_TORCH); \
	fi
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

## The whole test suite (CPU only; a few minutes).
test: install
	$(BIN)/python -m pytest -q

## Skip the slow tests (real training runs).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

## Prepare data for the profile, then run the seed train.py once end to end.
farm: prepare
	$(BIN)/farm try --profile $(PROFILE) --out $(RUN_DIR)

prepare: install
	$(BIN)/farm prepare --profile $(PROFILE)

doctor: install
	$(BIN)/farm doctor

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
