#!/usr/bin/env bash
# The whole GPU check on a lent H100, in phases that each fit one device call (10 minutes).
# Needs the GPU stack staged first (../shared/tools/device-stack.sh; three calls) so that
# /tmp/devstack/env.sh exists. Writes everything under $OUT (default ./gpu-out).
#   bash tools/gpu-check.sh tests   correctness of every CUDA pair + predicted-memory validation
#   bash tools/gpu-check.sh libs    correctness of the optional-library backends only (flash-attn, xFormers, fla)
#   bash tools/gpu-check.sh bench   TFLOP/s at 16k per backend (CLI sweep), asv on a GPU-grid subset in
#                                   the existing environment, an A/A regress run, fitted exponents
# Each step has its own timeout so that one slow step cannot take the others' results with it.
set -uo pipefail
phase=${1:?usage: tools/gpu-check.sh tests|libs|bench}
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
source /tmp/devstack/env.sh || { echo "stage the GPU stack first (device-stack.sh)"; exit 2; }
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1 ATTNPERF_SEED=${ATTNPERF_SEED:-20261123}
step() { echo "=== $1 ($(date +%T))"; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader | tee -a "$OUT/gpu.txt"
python3 -c "import torch, attnperf.machine as m; print(torch.__version__, torch.version.cuda, m.machine_tag())" | tee -a "$OUT/gpu.txt"
pytest_gpu() {  # $1 = timeout, $2 = -k expression, $3 = log name
  timeout "$1" python3 -m pytest tests/test_backends.py tests/test_analysis.py tests/test_flex.py -q -p no:cacheprovider \
    -k "$2" -rs -s > "$OUT/$3.log" 2>&1
  echo "pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/$3.log" | tail -15
}

case $phase in
tests)
  step "support matrix"
  python3 -m attnperf list --device cuda --dtype bfloat16 --seq-len 4096 > "$OUT/list.txt" 2>&1
  step "correctness (CUDA pairs) and memory predictions"
  pytest_gpu 480 "cuda or on_gpu" pytest ;;
libs)
  step "correctness of flash-attn4, flash-attn3, xformers, fla"
  pytest_gpu 300 "cuda and (flash-attn4 or flash-attn3 or xformers or fla)" pytest-libs
  grep -o "SKIPPED.*" "$OUT/pytest-libs.log" | sort | uniq -c | sort -rn | head -8 ;;
bench)
  step "TFLOP/s per backend at 16k (bf16, 16 heads, head_dim 128)"
  timeout 130 python3 -m attnperf sweep --device cuda --dtype bfloat16 --heads 16 --head-dim 128 --seq-lens 16384 \
    --variants full,causal --backends sdpa-flash,sdpa-efficient,sdpa-cudnn,flex,flash-attn4,flash-attn3,xformers \
    --json "$OUT/sweep16k.json" > "$OUT/sweep16k.txt" 2>&1; echo "sweep exit $?"; tail -16 "$OUT/sweep16k.txt"
  git init -q 2>/dev/null; git add -A >/dev/null; git -c user.name=gpu -c user.email=gpu@local commit -qm base >/dev/null
  git -c user.name=gpu -c user.email=gpu@local commit -q --allow-empty -m "a/a"
  M=$(python3 -c "from attnperf.machine import machine_tag; print(machine_tag())")
  python3 -m asv machine --yes --machine "$M" >/dev/null
  step "asv, existing environment, GPU grid subset (causal 16k)"
  ASV_PYTHONPATH=$PYTHONPATH ATTNPERF_SEQ_LENS=16384 ATTNPERF_VARIANTS=causal ATTNPERF_BACKENDS=sdpa-cudnn,flash-attn4,flex,xformers \
    timeout 100 python3 -m asv run --environment "existing:$(command -v python3)" --launch-method forkserver --machine "$M" \
    --set-commit-hash "$(git rev-parse HEAD~1)" -b 'TimeForward\.time_forward\(' > "$OUT/asv-run.txt" 2>&1
  echo "asv exit $?"; grep -A12 "time_forward " "$OUT/asv-run.txt" | tail -14
  step "A/A: regress --existing, a commit against an empty commit after it"
  ATTNPERF_SEQ_LENS=16384 ATTNPERF_VARIANTS=causal ATTNPERF_BACKENDS=sdpa-cudnn,flash-attn4 timeout 130 \
    python3 -m attnperf.regress HEAD~1 HEAD --existing --rounds 2 --factor 1.02 --confirm 0 -b 'TimeForward\.time_forward\(' \
    --machine "$M-aa" --summary "$OUT/aa-summary.md" > "$OUT/aa.txt" 2>&1; echo "regress exit $?"; tail -12 "$OUT/aa-summary.md"
  step "fitted exponents and roofline"
  timeout 110 python3 -m attnperf analyze --device cuda --dtype bfloat16 --heads 16 --head-dim 128 --seq-lens 4096,8192,16384,32768 \
    --variants full,causal,sliding_window,linear_causal --backends sdpa-cudnn,flash-attn4,fla --window 512 --measure --repeat 5 \
    --json "$OUT/analyze.json" > "$OUT/analyze.txt" 2>&1; echo "analyze exit $?"; tail -12 "$OUT/analyze.txt"
  tar czf "$OUT/asv-results.tgz" .asv/results 2>/dev/null ;;
*) echo "unknown phase $phase"; exit 2 ;;
esac
