#!/bin/sh
# Session 12 (H100), call 74: swiglu_bwd_rows as rows of threads (a block
# of R rows, eight columns a thread) instead of a warp a row:
#  1. its kernel test, the yg test, the fused-expert comparisons (now
#     against MOE_CUDA_YG=keep), the CPU comparisons;
#  2. seed-base steps interleaved: default, MOE_CUDA_YG=keep;
#  3. one profiled step (swiglu rows only).
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run74.txt
keep() { bc_as "yg kept" "MOE_CUDA_YG=keep"; }
{
echo "=== 1. tests"
tk 60 test_kernels 'kernels/swiglu_bwd_rows' | grep -E "swiglu_bwd_rows|\[FAIL|Assert|Synthesis" | tail -12
tk 90 test_backend 'backend/yg_free_matches_keep' | grep -E "yg free|\[FAIL|Assert|Synthesis" | tail -6
tk 200 test_backend 'backend/*fusion*' | grep -E "fused vs|\[FAIL|Assert|Synthesis" | tail -8
tk 200 test_backend 'backend/train_step*' | grep -E "cosine over|\[FAIL|Assert|Synthesis" | tail -8
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
