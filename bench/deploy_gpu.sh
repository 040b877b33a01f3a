#!/usr/bin/env bash
# bench.deploy on a lent CUDA machine without network or teacher weights (docs/deployment.md):
# float vs post-training quantized vs QAT (from the first step, and as a final phase with its
# float control), 3 seeds, a 6-layer 384-wide `narrow` student initialised at random from the
# teacher's config. CARRY holds what travels with the repo (~10 MB):
#   CARRY/whl/torchao-*.whl             torchao for that machine's torch (not installed there)
#   CARRY/labels/corpus-{train,heldout} the stored label sets (data/labels/corpus-*)
#   CARRY/teacher-config/               the teacher's config.json and tokenizer, no weights
# Writes OUT_FILE (default $OUT/deploy_gpu.json, else bench/results/deploy_gpu.json) after
# every seed; seeds that would pass --time-budget are not started.
#
#   bash bench/deploy_gpu.sh gpu-carry/deploy [extra bench.deploy flags]
set -euo pipefail
CARRY=${1:?usage: bench/deploy_gpu.sh CARRY_DIR [bench.deploy flags]}
shift
OUT_FILE=${OUT_FILE:-${OUT:-bench/results}/deploy_gpu.json}
if ! python3 -c "import torchao" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "${SITE:=/tmp/site}" "$CARRY"/whl/torchao-*.whl
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
nvidia-smi -L || true
python3 -m bench.deploy --train-labels "$CARRY/labels/corpus-train" \
  --heldout-labels "$CARRY/labels/corpus-heldout" --teacher "$CARRY/teacher-config" \
  --seeds 0,1,2 --steps 400 --qat-steps 100 --batch-tokens 4096 --lr 1e-3 --warmup-steps 40 \
  --keep-layers 6 --narrow-hidden-size 384 --quants '' --time-budget 330 \
  --out "$OUT_FILE" "$@" 2>&1 | tr '\r' '\n' | grep --line-buffered -v -E 's/step|step/s|it/s|s/it|^\s*$'
