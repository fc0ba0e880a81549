#!/bin/sh
# Session 12 (H200), call 79: olmoe-1b-7b (seq 4096) with the session's
# final code, beside torch_ref --preset olmoe (micro-batch 2) in the same
# call; olmoe has no shared experts, so of this session's changes the
# yg-free routed backward and SwiGLU without a division apply:
#  1. the routed-expert tests (olmoe's I = 1024 rows in swiglu_bwd_rows),
#     and qkv_batched_matches_split, which failed in call 78 (its two runs
#     now both with the router apart);
#  2. our steps at micro-batch 3 (the largest that fits) and 2, with
#     MOE_CUDA_YG=keep at both, torch_ref best_c.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run79.txt
{
echo "=== 1. tests"
tk 90 test_kernels 'kernels/swiglu*' | grep -E "\[FAIL|\[PASS|Assert|Synthesis" | tail -4
tk 90 test_backend 'backend/yg_free_matches_keep' | grep -E "yg free|\[FAIL|Assert|Synthesis" | tail -4
tk 90 test_backend 'backend/qkv_batched_matches_split' | grep -E "batched vs split|\[FAIL|Assert|Synthesis" | tail -4
date -u
olmoe_step 3
olmoe_step 3 "MOE_CUDA_YG=keep"
echo "=== torch_ref --preset olmoe --modes best_c (B=2, T=4096)"
timeout 300 python3 $R/torch_ref.py --preset olmoe --modes best_c 2>&1 | grep -v Warning | tail -2
olmoe_step 2
olmoe_step 2 "MOE_CUDA_YG=keep"
olmoe_step 3
date -u
} 2>&1 | tee $O
