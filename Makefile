# Two commands do all the set-up (see README.md):
#   make run    install into .venv if needed, then run the whole pipeline on the default data
#   make test   install into .venv if needed, then run the test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: run test install dvc-repro

install: $(VENV)/.installed

# torch and torchvision are pinned together: the registry's torchvision only imports beside
# its matching torch (timm needs torchvision).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

run: install
	snakemake --cores all

dvc-repro: install
	dvc repro

# two workers on two cores, a file at a time each, in the order tests/conftest.py gives (the
# longest files first, so that no minutes-long file starts last and runs alone; xdist would
# otherwise reorder files by their number of tests)
test: install
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder -q --durations=15
