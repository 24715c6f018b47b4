#!/usr/bin/env bash
# The measured figures of docs/duality.md: a duality-reward GRPO run on SmolLM2-135M + arith2,
# then dual reranking of the base model on 32 held-out problems (N=4 candidates, K=4 dual samples).
# On the shared machine run it under the heavy-job lock:
#   flock /tmp/tandem-heavy.lock bash scripts/duality_arith2.sh
# Environment: STEPS (20); DEADLINE (HH:MM: fewer steps when the run would not finish before
# it, about 45 s per step assumed); OUT (runs/duality_arith2); RERANK (1 = also rerank).
set -euo pipefail
cd "$(dirname "$0")/.."
T=.venv/bin/tandem
STEPS=${STEPS:-20}
OUT=${OUT:-runs/duality_arith2}
if [[ -n "${DEADLINE:-}" ]]; then
  left=$(( $(date -d "$DEADLINE" +%s) - $(date +%s) - 600 ))  # 10 min for eval and rerank
  fit=$(( left / 45 ))
  if (( fit < STEPS )); then STEPS=$(( fit < 4 ? 4 : fit )); fi
fi
echo "[duality_arith2] $(date +%T) training $STEPS steps into $OUT"
$T train configs/duality_arith2.yaml steps="$STEPS" eval.before=false log.progress=false \
  output_dir="$OUT"
if [[ "${RERANK:-1}" == 1 ]]; then
  echo "[duality_arith2] $(date +%T) rerank, base model"
  $T rerank configs/duality_arith2.yaml eval.size=32 n=4 k=4 temperature=0.7 \
    log.progress=false output_dir=runs/duality_rerank/base
fi
echo "[duality_arith2] $(date +%T) done"
