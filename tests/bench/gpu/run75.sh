#!/bin/sh
# Session 12 (H100), call 75: swiglu_bwd_rows with rows of whole warps (each warp
# sums its part, the row's first thread adds the warps' parts):
#  1. its kernel test, the yg test;
#  2. seed-base steps interleaved: default, MOE_CUDA_YG=keep;
#  3. one profiled step (swiglu rows only).
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run75.txt
keep() { bc_as "yg kept" "MOE_CUDA_YG=keep"; }
{
echo "=== 1. tests"
tk 60 test_kernels 'kernels/swiglu_bwd_rows' | grep -E "swiglu_bwd_rows|\[FAIL|Assert|Synthesis" | tail -12
tk 90 test_backend 'backend/yg_free_matches_keep' | grep -E "yg free|\[FAIL|Assert|Synthesis" | tail -6
date -u
echo "=== 2. seed-base steps"
bc
keep
bc
keep
date -u
profile "swiglu|gather|combine|scatter|total|wall"
date -u
} 2>&1 | tee $O
