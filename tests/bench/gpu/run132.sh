#!/bin/sh
# Session 18 (H200), call 132: multiprocessors left to AdamW.  The main
# stream's persistent kernels (grouped_tma.cu's GEMMs, the fa3p forward)
# and cuBLASLt's GEMMs (CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET) run on all
# but MOE_CUDA_SM_RESERVE multiprocessors while AdamW spans are pending on
# the optimizer stream.  overlap_probe with the routed gate_up GEMM's grid
# capped; test_backend whole with a reserve of 16; seed-base steps with
# reserves 0, 8, 16, 24, 32 interleaved.  Everything in $OUT/run132.txt.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
echo "=== overlap_probe (gate_up GEMM grid cap)"
for g in 0 124 116 108 100; do LD_LIBRARY_PATH=$R/lib timeout 60 $R/ov 40 $g; done
echo "=== test_backend (all) MOE_CUDA_SM_RESERVE=16"
MOE_CUDA_SM_RESERVE=16 tk 90 test_backend '*' | grep -E "cosine over|\[FAIL|Assert|Synthesis" | tail -12
echo "=== steps"
for r in 0 16 8 24 32 0 16 8 24 32 0; do bc_as r$r MOE_CUDA_SM_RESERVE=$r; done
} >$O/run132.txt 2>&1
grep -E "^=== |grid|\[FAIL|Assert|Synthesis|step_ms" $O/run132.txt |
	sed 's/"model".*"step_ms"/"step_ms"/; s/"tflops".*"loss"/"loss"/' | tail -45
date -u
