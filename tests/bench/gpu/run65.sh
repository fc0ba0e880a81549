#!/bin/sh
# Session 11 (H100), call 65: q, k, v packed in rows of 3 D (the default
# now) on top of calls 63-64's changes:
#  1. the changed kernel tests, the new backend test, then both GPU test
#     binaries whole and resume_gpu.sh;
#  2. seed-base steps interleaved: default, MOE_CUDA_QKV=batched,
#     session 10's path (MOE_CUDA_QKV=batched MOE_CUDA_SHARED_MERGE=0
#     MOE_CUDA_DQ_FUSE=0), torch_ref best_c in the same call;
#  3. the cuBLASLt plans, one profiled step, ktrace.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run65.txt
S10="MOE_CUDA_QKV=batched MOE_CUDA_SHARED_MERGE=0 MOE_CUDA_DQ_FUSE=0"
{
echo "=== 1. changed tests"
tk 60 test_kernels 'kernels/qknorm_rope*' | grep -E "\[FAIL|Assert|Synthesis" | tail -6
tk 120 test_backend 'backend/qkv_*' | grep -E "packed vs|\[FAIL|Assert|Synthesis" | tail -12
tk 90 test_backend 'backend/dq_fusion_same_step' | grep -E "dq from|\[FAIL|Assert|Synthesis" | tail -4
tk 90 test_backend 'backend/shared_experts_merged_match' | grep -E "merged vs|\[FAIL|Assert|Synthesis" | tail -4
suites
date -u
echo "=== 2. seed-base steps"
for k in 1 2; do
	bc
	MOE_CUDA_QKV=batched bc
	bc_as "session 10 path" "$S10"
	[ $k = 1 ] && torch_seed
done
bc
date -u
echo "=== 3. plans"
plans
profile
echo "=== 3. ktrace, bench_cuda -n 3 -w 2"
ktr kt65
date -u
} 2>&1 | tee $O
