#!/bin/sh
# Session 12 (H100), call 77: the optimizer spans back to one expert run a
# layer (the shared experts before the routed ones in the table, the router
# before them: call 76 had split it, 73 AdamW launches instead of 37), the
# merged SwiGLU of the shared experts as one launch (rows in groups of S),
# and SwiGLU's h as (g sg) u, one reciprocal, no division:
#  1. the kernel tests touched, the backend's comparisons;
#  2. seed-base steps interleaved: default, MOE_CUDA_ROUTER_MERGE=0,
#     MOE_CUDA_YG=keep as well, torch_ref best_c;
#  3. one profiled step.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run77.txt
S11="MOE_CUDA_YG=keep MOE_CUDA_ROUTER_MERGE=0"
rm0() { bc_as "router apart" "MOE_CUDA_ROUTER_MERGE=0"; }
s11() { bc_as "yg kept, router apart" "$S11"; }
{
echo "=== 1. tests"
tk 60 test_kernels 'kernels/swiglu*' | grep -E "\[FAIL|\[PASS|Assert|Synthesis" | tail -6
tk 200 test_kernels 'kernels/grouped_tma_swiglu' | grep -E "\[FAIL|\[PASS|Assert|Synthesis" | tail -4
tk 200 test_kernels 'kernels/grouped_wgmma_expert_fused' | grep -E "\[FAIL|\[PASS|Assert|Synthesis" | tail -4
tk 90 test_backend 'backend/router_merge_matches' | grep -E "router merged|\[FAIL|Assert|Synthesis" | tail -6
tk 90 test_backend 'backend/yg_free_matches_keep' | grep -E "yg free|\[FAIL|Assert|Synthesis" | tail -6
tk 200 test_backend 'backend/train_step*' | grep -E "cosine over|\[FAIL|Assert|Synthesis" | tail -8
tk 200 test_backend 'backend/*fusion*' | grep -E "fused vs|\[FAIL|Assert|Synthesis" | tail -6
tk 200 test_backend 'backend/shared_experts_merged_match' | grep -E "merged vs|\[FAIL|Assert|Synthesis" | tail -4
date -u
echo "=== 2. seed-base steps"
bc
rm0
s11
torch_seed
bc
rm0
s11
bc
date -u
profile
date -u
} 2>&1 | tee $O
