# Quick start: `make demo` (set up, draw one image with the built-in demo model) and `make test`
# (lint, then the whole suite).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DEMO_PROMPT ?= a red circle on the left on a blue background

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.torch: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[torch]'
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.torch

demo: $(VENV)/.torch
	mkdir -p out
	$(BIN)/qiedge generate "$(DEMO_PROMPT)" --width 256 --height 256 --out out/demo.png
	@echo "demo image: $(CURDIR)/out/demo.png"

lint: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python .ci/layers.py

test: lint
	$(BIN)/python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder

clean:
	rm -rf out .pytest_cache
