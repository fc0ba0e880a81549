#!/bin/sh
# Session 12 (H100), call 76: the gate weights in expert order for
# swiglu_bwd_rows (gathered with dout's rows, gather_inv_w), and the
# router's linear merged with the shared experts' gate_up:
#  1. the new and changed kernel tests, the backend's comparisons;
#  2. seed-base steps interleaved: default, MOE_CUDA_ROUTER_MERGE=0,
#     session 11's path (also MOE_CUDA_YG=keep), torch_ref best_c;
#  3. one profiled step.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run76.txt
S11="MOE_CUDA_YG=keep MOE_CUDA_ROUTER_MERGE=0"
rm0() { bc_as "router apart" "MOE_CUDA_ROUTER_MERGE=0"; }
s11() { bc_as "session 11 path" "$S11"; }
{
echo "=== 1. tests"
tk 60 test_kernels 'kernels/swiglu*' | grep -E "swiglu_bwd_rows|\[FAIL|\[PASS|Assert|Synthesis" | tail -14
tk 90 test_kernels 'kernels/route_group*' | grep -E "\[FAIL|\[PASS|Assert|Synthesis" | tail -4
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
