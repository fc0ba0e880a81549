#!/bin/sh
# Session 11 (H100), call 71: the GEMM tuning over more of cuBLASLt's
# candidates (MOE_CUDA_GEMM_CANDS 16, 32; default 8; still only those with
# the first candidate's bits), seed-base steps interleaved; the plans of 32.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run71.txt
{
for k in 1 2; do
	bc
	MOE_CUDA_GEMM_CANDS=16 bc
	MOE_CUDA_GEMM_CANDS=32 bc
done
bc
echo "=== plans, MOE_CUDA_GEMM_CANDS=32"
plans MOE_CUDA_GEMM_CANDS=32
date -u
} 2>&1 | tee $O
