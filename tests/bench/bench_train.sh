#!/bin/sh
# Training throughput of the CUDA backend beside the PyTorch reference, on
# the GPU machine (not part of `make check`).  Prints JSON lines and tables.
#   sh tests/bench/bench_train.sh BINDIR TORCH_REF_PY [B]
# BINDIR holds bench_cuda, bench_kernels and bench_gemm (tests/bench/ of a CUDA build);
# TORCH_REF_PY is shared/bench/torch_ref.py (copied beside the tree when the
# tree travels without ../shared).  B: a second micro-batch to measure
# beside 16 (default 8).
# Steps: 1. kernel microbenchmarks (expert GEMMs and attention, then the
# step's dense cuBLAS shapes); 2. seed-base training steps (median of 6
# after 2 warm-up) at B=16 with the default expert GEMMs (tma on sm_90), the
# wgmma ones and cuBLAS's grouped GEMM, then at B; 3. one profiled step at
# B=16 (per-op time); 4. torch_ref best_c at B=16 and at B, in the same run
# on the same card.
set -u
BIN=${1:?usage: bench_train.sh BINDIR TORCH_REF_PY [B]}
REF=${2:?usage: bench_train.sh BINDIR TORCH_REF_PY [B]}
B=${3:-8}
SRC=$(cd "$(dirname "$0")/../.." && pwd)
export MOE_DATADIR="$SRC/share"
M="$SRC/share/models/seed-base.json"
echo "== card: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader) date: $(date -u +%F)"
echo "== 1. kernels at seed-base shapes (B=$B)"
"$BIN/bench_kernels" -B "$B"
"$BIN/bench_gemm" -B 16
echo "== 2. seed-base training step, seq 2048, micro-batch 16 and $B"
"$BIN/bench_cuda" -m "$M" -B 16 -n 6 -w 2 2>&1 | grep -v '^step'
MOE_CUDA_GROUPED=wgmma "$BIN/bench_cuda" -m "$M" -B 16 -n 6 -w 2 2>/dev/null
MOE_CUDA_GROUPED=cublas-grouped "$BIN/bench_cuda" -m "$M" -B 16 -n 6 -w 2 2>/dev/null
"$BIN/bench_cuda" -m "$M" -B "$B" -n 6 -w 2 2>/dev/null
echo "== 3. one profiled step (B=16)"
"$BIN/bench_cuda" -m "$M" -B 16 -n 1 -w 2 -p 2>/dev/null | tail -n +2
echo "== 4. torch_ref best_c (same card, same run)"
python3 "$REF" --preset seed --modes best_c 2>&1 | grep -v '^#' | grep -v Warning
[ "$B" = 16 ] && exit 0
python3 "$REF" --preset seed --modes best_c --B "$B" 2>&1 | grep -v '^#' | grep -v Warning
