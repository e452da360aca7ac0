# difforge: `make train` and `make test` are all a fresh machine needs (Python 3.11).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Reinstall when the pins change.
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | sha1sum | cut -c1-12)
# torch and torchvision are pinned together on every install line: torchvision and torch-fidelity
# install only beside this pair (see README, "Install").
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install train test test-slow test-all lint format clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q $(TORCH_PINS) -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $@

## Train the default experiment (digits, tiny U-Net, CPU if no GPU). Extra overrides: make train ARGS="schedule=cosine"
train: install
	$(BIN)/python src/train.py $(ARGS)

## The test suite without the slow end-to-end runs.
test: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

## Only the slow end-to-end runs (DDP, sweeps, kill-and-resume).
test-slow: install
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

test-all: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/pre-commit run --all-files

format: install
	$(BIN)/ruff format src tests scripts
	$(BIN)/ruff check --fix src tests scripts

clean:
	rm -rf logs .pytest_cache .ruff_cache .mypy_cache
