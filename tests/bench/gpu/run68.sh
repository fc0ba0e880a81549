#!/bin/sh
# Session 11 (H200), call 68: olmoe-1b-7b (seq 4096) with the session's
# final code, beside torch_ref --preset olmoe (micro-batch 2) in the same
# call; olmoe has no shared experts, so of this session's changes the
# packed q, k, v and the dq from fa3f's tiles apply:
#  1. the QK-norm tests (olmoe's 2048-wide rows among them);
#  2. our steps at micro-batch 3 (the largest that fits) and 2, the
#     session 10 path (MOE_CUDA_QKV=batched MOE_CUDA_DQ_FUSE=0) at both,
#     torch_ref best_c.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run68.txt
S10="MOE_CUDA_QKV=batched MOE_CUDA_DQ_FUSE=0"
{
echo "=== 1. QK-norm tests"
tk 90 test_kernels 'kernels/qknorm_rope*' | grep -E "\[FAIL|Assert|Synthesis" | tail -4
date -u
olmoe_step 3
olmoe_step 3 "$S10"
echo "=== torch_ref --preset olmoe --modes best_c (B=2, T=4096)"
timeout 300 python3 $R/torch_ref.py --preset olmoe --modes best_c 2>&1 | grep -v Warning | tail -2
olmoe_step 2
olmoe_step 2 "$S10"
olmoe_step 3
date -u
} 2>&1 | tee $O
