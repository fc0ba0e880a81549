#!/bin/sh
# Session 9 (H100), call 51: the session's final code (c3abc97's kernels:
# the tail warpgroups without MMAs, fa3f*'s swizzled dQ staging; the
# defaults otherwise unchanged) validated and measured:
#  1. both GPU test binaries whole, resume_gpu.sh;
#  2. seed-base steps interleaved (default, MOE_CUDA_ATTENTION_BWD=fa3f,
#     MOE_CUDA_TMA_TAILSKIP=0), torch_ref best_c in the same call;
#  3. one profiled step.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run51.txt
{
echo "=== 1. test_kernels (all, timeout 250)"
tk 250 test_kernels '*' | grep -E "\[FAIL|Assert|Synthesis" | tail -20
echo "=== 1. test_backend (all, timeout 90)"
tk 90 test_backend '*' | grep -E "cosine over|four steps|\[FAIL|Assert|Synthesis" | tail -20
echo "=== 1. resume_gpu.sh"
MOE_BIN=$B/cmd MOE_BUILDDIR=$B MOE_SRCDIR=$PWD timeout 200 sh tests/train/resume_gpu.sh; echo "rc=$?"
date -u
echo "=== 2. seed-base steps"
for k in 1 2; do
	bc
	MOE_CUDA_ATTENTION_BWD=fa3f bc
	MOE_CUDA_TMA_TAILSKIP=0 bc
	[ $k = 1 ] && torch_seed
done
bc
date -u
profile
date -u
} 2>&1 | tee $O
