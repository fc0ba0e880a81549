#!/bin/sh
# Session 10 (H100), call 58: programmatic dependent launch without an
# early trigger (the kernels only wait; call 57's launch_dependents after
# the wait made steps slower), and AdamW with every stream evict-first
# (MOE_CUDA_ADAMW=cs);
#  1. test_backend whole with PDL;
#  2. seed-base steps interleaved: MOE_CUDA_PDL=0, PDL (the build's
#     default), MOE_CUDA_PDL=0 MOE_CUDA_ADAMW=cs;
#  3. profiled steps (AdamW's op time) with and without cs.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run58.txt
{
echo "=== 1. test_backend (all, timeout 90), PDL"
tk 90 test_backend '*' | grep -E "cosine over|four steps|\[FAIL|Assert|Synthesis" | tail -20
date -u
echo "=== 2. seed-base steps"
for k in 1 2 3; do
	MOE_CUDA_PDL=0 bc
	bc
	MOE_CUDA_PDL=0 MOE_CUDA_ADAMW=cs bc
done
date -u
for a in vec cs vec cs; do
	echo "=== 3. MOE_CUDA_PDL=0 MOE_CUDA_ADAMW=$a"
	MOE_CUDA_PDL=0 MOE_CUDA_ADAMW=$a profile "adamw|total|wall"
done
date -u
} 2>&1 | tee $O
