#!/bin/sh
# Session 11 (H100), call 64: the shared experts merged (034f286: one
# gate_up linear, one SwiGLU each way) on top of call 63's dq change:
#  1. the new kernel tests, all of test_backend, then both GPU test
#     binaries whole and resume_gpu.sh;
#  2. seed-base steps interleaved: default, MOE_CUDA_SHARED_MERGE=0,
#     MOE_CUDA_DQ_FUSE=0 with MOE_CUDA_SHARED_MERGE=0 (session 10's path),
#     torch_ref best_c in the same call;
#  3. the cuBLASLt plans of a default run (-G), one profiled step, ktrace.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run64.txt
{
echo "=== 1. new kernel tests"
tk 60 test_kernels 'kernels/swiglu_groups' | grep -E "\[FAIL|Assert|Synthesis" | tail -6
tk 60 test_kernels 'kernels/qknorm_rope_from_dq_tiles' | grep -E "\[FAIL|Assert|Synthesis" | tail -6
tk 90 test_backend 'backend/shared_experts_merged_match' | grep -E "shared experts merged|\[FAIL|Assert|Synthesis" | tail -6
tk 90 test_backend 'backend/train_step_matches_cpu_shared2' | grep -E "cosine over|\[FAIL|Assert|Synthesis" | tail -6
tk 90 test_backend 'backend/dq_fusion_same_step' | grep -E "dq from|\[FAIL|Assert|Synthesis" | tail -6
suites
date -u
echo "=== 2. seed-base steps"
for k in 1 2; do
	bc
	MOE_CUDA_SHARED_MERGE=0 bc
	MOE_CUDA_SHARED_MERGE=0 MOE_CUDA_DQ_FUSE=0 bc
	[ $k = 1 ] && torch_seed
done
bc
date -u
echo "=== 3. plans"
plans
profile
echo "=== 3. ktrace, bench_cuda -n 3 -w 2"
ktr kt64
date -u
} 2>&1 | tee $O
