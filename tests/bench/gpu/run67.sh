#!/bin/sh
# Session 11 (H100), call 67: the session's final code validated and
# measured (dq from fa3f's tiles, shared experts side by side, q, k, v
# packed, copy_rows kernel):
#  1. the new copy_rows test, both GPU test binaries whole, resume_gpu.sh;
#  2. seed-base steps interleaved: default, session 10's path
#     (MOE_CUDA_QKV=batched MOE_CUDA_SHARED_MERGE=0 MOE_CUDA_DQ_FUSE=0),
#     torch_ref best_c in the same call;
#  3. one profiled step, ktrace.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run67.txt
S10="MOE_CUDA_QKV=batched MOE_CUDA_SHARED_MERGE=0 MOE_CUDA_DQ_FUSE=0"
s10() { bc_as "session 10 path" "$S10"; }
{
echo "=== 1. copy_rows, shared experts"
tk 60 test_kernels 'kernels/copy_rows' | grep -E "\[FAIL|Assert|Synthesis" | tail -4
tk 90 test_backend 'backend/shared_experts_merged_match' | grep -E "merged vs|\[FAIL|Assert|Synthesis" | tail -4
suites
date -u
echo "=== 2. seed-base steps"
for k in 1 2; do
	bc
	s10
	[ $k = 1 ] && torch_seed
done
bc
s10
bc
date -u
profile
echo "=== 3. ktrace, bench_cuda -n 3 -w 2"
ktr kt67
date -u
} 2>&1 | tee $O
