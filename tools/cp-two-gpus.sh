#!/usr/bin/env bash
# Context parallelism on the two GPUs of one host, in one run (docs/context-parallel.md):
#   1. check: the gathered 2-GPU output against the float64 reference (full, causal; MHA and GQA);
#   2. the causal table, 16k … 256k tokens (B1 H16 D128 bf16), 1 GPU (best of sdpa-cudnn, sdpa-flash,
#      flash-attn4) vs 2 GPUs, speedup, efficiency, peak memory per rank ($OUT/table-causal);
#   3. the longest sequence each holds: a memory-heavy causal shape (H128 D256) doubled from 128k
#      until each configuration fails, one run per length past the timed one ($OUT/hold);
#   4. the same table for full attention ($OUT/table-full).
# Each step has its own timeout (17 minutes in all at most). Writes everything under $OUT (default
# ./cp-out). Usage: OUT=/some/dir tools/cp-two-gpus.sh
set -uo pipefail  # a step that fails or runs out of time does not stop the next
OUT="${OUT:-cp-out}"
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE="${NCCL_NVLS_ENABLE:-0}" TORCH_SYMM_MEM_DISABLE_MULTICAST="${TORCH_SYMM_MEM_DISABLE_MULTICAST:-1}"
export NVSHMEM_DISABLE_NVLS="${NVSHMEM_DISABLE_NVLS:-1}"
run() { timeout "$1" torchrun --nproc-per-node 2 -m attnperf cp "${@:2}"; }  # $1: seconds for this step

run 120 check --device cuda --seq-lens 4096,16384 --json "$OUT/check-mha.json" 2>&1 | tee "$OUT/check.log"
run 120 check --device cuda --seq-lens 4096,16384 --kv-heads 4 --json "$OUT/check-gqa.json" 2>&1 | tee -a "$OUT/check.log"
# Causal first: it carries the targets (>= 1.8x at >= 256k). Each step writes its table row by row,
# so a step cut off by its timeout keeps the rows it finished (with both variants in one step, a
# timeout once lost every causal row from 64k on).
run 300 bench --device cuda --variants causal --out "$OUT/table-causal" 2>&1 | tee "$OUT/table-causal.log"
run 240 bench --device cuda --variants causal --heads 128 --head-dim 256 --baselines sdpa-cudnn,sdpa-flash \
  --seq-lens 131072 --max-seq-len 1048576 --repeat 3 --rotate alltoall --out "$OUT/hold" 2>&1 | tee "$OUT/hold.log"
run 240 bench --device cuda --variants full --out "$OUT/table-full" 2>&1 | tee "$OUT/table-full.log"
