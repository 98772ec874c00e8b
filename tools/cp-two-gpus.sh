#!/usr/bin/env bash
# Context parallelism on the two GPUs of one host, in one call (docs/context-parallel.md):
#   1. check: the gathered 2-GPU output against the float64 reference (full, causal; MHA and GQA);
#   2. the table: causal and full, 16k … 256k tokens (B1 H16 D128 bf16), 1 GPU (best of sdpa-cudnn,
#      sdpa-flash, flash-attn4) vs 2 GPUs, speedup, efficiency, peak memory per rank;
#   3. the longest sequence each holds: a memory-heavy causal shape (H128 D256) doubled from 128k
#      until each configuration fails, one run per length past the timed one.
# Writes everything under $OUT (default ./cp-out). Usage: OUT=/some/dir tools/cp-two-gpus.sh
set -euo pipefail
OUT="${OUT:-cp-out}"
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE="${NCCL_NVLS_ENABLE:-0}" TORCH_SYMM_MEM_DISABLE_MULTICAST="${TORCH_SYMM_MEM_DISABLE_MULTICAST:-1}"
export NVSHMEM_DISABLE_NVLS="${NVSHMEM_DISABLE_NVLS:-1}"
run() { torchrun --nproc-per-node 2 -m attnperf.cp "$@"; }

run check --device cuda --seq-lens 4096,16384 --json "$OUT/check-mha.json" 2>&1 | tee "$OUT/check.log"
run check --device cuda --seq-lens 4096,16384 --kv-heads 4 --json "$OUT/check-gqa.json" 2>&1 | tee -a "$OUT/check.log"
run bench --device cuda --out "$OUT/table" 2>&1 | tee "$OUT/table.log"
run bench --device cuda --variants causal --heads 128 --head-dim 256 --baselines sdpa-cudnn,sdpa-flash \
  --seq-lens 131072 --max-seq-len 1048576 --repeat 3 --rotate alltoall --out "$OUT/hold" 2>&1 | tee "$OUT/hold.log"
