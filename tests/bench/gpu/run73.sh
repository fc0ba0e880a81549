#!/bin/sh
# Session 12 (H100), call 73: the routed experts' backward without their
# outputs yg (expert_combine_down_bwd; xg kept per layer instead):
#  1. the new kernel and backend tests, the backend's CPU comparisons and
#     expert-path tests;
#  2. seed-base steps interleaved: default, MOE_CUDA_YG=keep (session 11's
#     path), torch_ref best_c in the same call;
#  3. one profiled step.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run73.txt
keep() { bc_as "yg kept" "MOE_CUDA_YG=keep"; }
{
echo "=== 1. tests"
tk 60 test_kernels 'kernels/swiglu_bwd_rows' | grep -E "swiglu_bwd_rows|\[FAIL|Assert|Synthesis" | tail -12
tk 90 test_backend 'backend/yg_free_matches_keep' | grep -E "yg free|\[FAIL|Assert|Synthesis" | tail -6
tk 200 test_backend 'backend/train_step*' | grep -E "cosine over|\[FAIL|Assert|Synthesis" | tail -8
tk 200 test_backend 'backend/expert*' | grep -E "\[FAIL|Assert|Synthesis" | tail -6
tk 200 test_backend 'backend/grads_by_overwrite' | grep -E "\[FAIL|Assert|Synthesis" | tail -4
date -u
echo "=== 2. seed-base steps"
bc
keep
bc
keep
torch_seed
bc
keep
date -u
profile
date -u
} 2>&1 | tee $O
