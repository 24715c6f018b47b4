#!/usr/bin/env bash
# make gpu-check: the tests marked `gpu`, then short SmolLM2 GRPO runs on CUDA printing step
# time and peak GPU memory (scripts/gpu_check.py). Runs on the machine's own Python (a stock
# CUDA PyTorch image: torch, transformers, peft, accelerate), offline: the few packages it
# lacks come from wheels/gpu (`make gpu-wheels` on a machine with network) when present.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
if [ -d wheels/gpu ]; then
  $PY -m pip install --quiet --no-index --no-deps --find-links wheels/gpu -r requirements/gpu-check.txt
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
$PY -c "import sys, torch; ok = torch.cuda.is_available(); print('[gpu-check]', torch.cuda.get_device_name() if ok else 'no CUDA device here: nothing to check', 'torch', torch.__version__); sys.exit(0 if ok else 1)"
# -p no:cacheprovider: the checkout may be read-only
$PY -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
$PY scripts/gpu_check.py --steps "${STEPS:-6}" --out "${OUT:-.}/gpu-check.json"
