#!/usr/bin/env bash
# The whole GPU check on a lent H100, in two phases (one device call each, within its 10 minutes).
# Needs the GPU stack staged first (../shared/tools/device-stack.sh; three calls) so that
# /tmp/devstack/env.sh exists. Writes everything under $OUT (default ./gpu-out).
#   bash tools/gpu-check.sh tests   correctness of every CUDA pair + predicted-memory validation
#   bash tools/gpu-check.sh bench   TFLOP/s at 16k per backend (CLI sweep), asv on a GPU-grid subset in
#                                   the existing environment, an A/A regress run, fitted exponents
set -uo pipefail
phase=${1:?usage: tools/gpu-check.sh tests|bench}
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
source /tmp/devstack/env.sh || { echo "stage the GPU stack first (device-stack.sh)"; exit 2; }
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1 ATTNPERF_SEED=${ATTNPERF_SEED:-20261123}
step() { echo "=== $1 ($(date +%T))"; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, attnperf.machine as m; print(torch.__version__, torch.version.cuda, m.machine_tag())" | tee -a "$OUT/gpu.txt"

if [[ $phase == tests ]]; then
  step "support matrix"
  python3 -m attnperf list --device cuda --dtype bfloat16 --seq-len 4096 > "$OUT/list.txt" 2>&1; head -20 "$OUT/list.txt"
  step "correctness (CUDA pairs) and memory predictions"
  timeout 480 python3 -m pytest tests/test_backends.py tests/test_analysis.py tests/test_flex.py -q -p no:cacheprovider \
    -k "cuda or on_gpu" -rs -s --junitxml="$OUT/junit.xml" > "$OUT/pytest.log" 2>&1
  echo "pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/pytest.log" | tail -25
  grep "^MEMORY" "$OUT/pytest.log" > "$OUT/memory.txt"; wc -l < "$OUT/memory.txt"
  exit 0
fi

step "TFLOP/s per backend at 16k (bf16, 16 heads, head_dim 128)"
timeout 200 python3 -m attnperf sweep --device cuda --dtype bfloat16 --heads 16 --head-dim 128 --seq-lens 16384 \
  --variants full,causal --json "$OUT/sweep16k.json" 2>/dev/null | tee "$OUT/sweep16k.txt"
step "asv, existing environment, GPU grid subset"
git init -q 2>/dev/null; git add -A >/dev/null; git -c user.name=gpu -c user.email=gpu@local commit -qm base >/dev/null
git -c user.name=gpu -c user.email=gpu@local commit -q --allow-empty -m "a/a"
M=$(python3 -c "from attnperf.machine import machine_tag; print(machine_tag())")
python3 -m asv machine --yes --machine "$M" >/dev/null
ASV_PYTHONPATH=$PYTHONPATH ATTNPERF_SEQ_LENS=4096,16384 ATTNPERF_VARIANTS=full,causal,sliding_window timeout 220 python3 -m asv run \
  --environment "existing:$(command -v python3)" --launch-method forkserver --machine "$M" --set-commit-hash "$(git rev-parse HEAD~1)" \
  -b 'TimeForward\.time_forward\(' --show-stderr > "$OUT/asv-run.txt" 2>&1; echo "asv exit $?"; tail -40 "$OUT/asv-run.txt"
step "A/A: regress --existing on one commit and an empty commit after it"
ATTNPERF_SEQ_LENS=16384 ATTNPERF_VARIANTS=full,causal ATTNPERF_BACKENDS=sdpa-cudnn,flash-attn4,flex timeout 150 \
  python3 -m attnperf.regress HEAD~1 HEAD --existing --rounds 2 --factor 1.05 --confirm 0 -b 'TimeForward\.time_forward\(' \
  --machine "$M-aa" --summary "$OUT/aa-summary.md" > "$OUT/aa.txt" 2>&1; echo "regress exit $?"; tail -20 "$OUT/aa-summary.md"
step "fitted exponents and roofline"
timeout 120 python3 -m attnperf analyze --device cuda --dtype bfloat16 --heads 16 --head-dim 128 --seq-lens 2048,4096,8192,16384,32768 \
  --variants full,causal,sliding_window,linear_causal --backends sdpa-cudnn,flash-attn4,fla,tiled --window 512 --measure --repeat 5 \
  --json "$OUT/analyze.json" 2>/dev/null | tail -40 | tee "$OUT/analyze.txt"
tar czf "$OUT/asv-results.tgz" .asv/results 2>/dev/null
