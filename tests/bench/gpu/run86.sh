#!/bin/sh
# Session 13 (H100), call 86: the clip norms' sums of squares in one batch
# of launches (MOE_CUDA_SUMSQ_BATCH), no memsets of the deferred results'
# slots, the LM head's weight gradient stored straight into its slot
# (no clearing of hgrad, no copy in the backward); the tests those touch;
# seed-base steps against MOE_CUDA_SUMSQ_BATCH=0 and against dense weight
# gradients stored whatever their size (MOE_CUDA_WGRAD_STORE_MIN=0),
# torch_ref in the same call, a kernel trace.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run86.txt
{
echo "=== test_kernels (sums of squares, xent)"
tk 200 test_kernels '*sumsq*' | grep -E "\[FAIL|Assert|Synthesis" | tail -8
tk 200 test_kernels '*xent*' | grep -E "\[FAIL|Assert|Synthesis" | tail -8
tk 200 test_kernels '*wgrad_ssq*' | grep -E "\[FAIL|Assert|Synthesis" | tail -8
echo "=== test_backend (all, timeout 150)"
tk 150 test_backend '*' | grep -E "cosine over|four steps|expert clip norm|\[FAIL|Assert|Synthesis" | tail -20
bc
bc_as "sumsq one by one" "MOE_CUDA_SUMSQ_BATCH=0"
bc_as "wgrad store" "MOE_CUDA_WGRAD_STORE_MIN=0"
torch_seed
bc
bc_as "sumsq one by one" "MOE_CUDA_SUMSQ_BATCH=0"
bc_as "wgrad store" "MOE_CUDA_WGRAD_STORE_MIN=0"
bc
ktr ktrace-s13-call86
profile
date -u
} 2>&1 | tee $O
