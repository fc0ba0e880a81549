#!/bin/sh
# Session 4, call 3: the q, k, v projections as one batched GEMM (forward and
# weight gradient; MOE_CUDA_QKV=split: three) and the routing statistics
# read back in three transfers: test_backend, the step both ways,
# interleaved, and the per-op profile.
set -u
. "$(dirname "$0")/common.sh"
gpu_test test_backend "optimizer stream|cosine over|PASS|FAIL|Synthesis" 10
for i in 1 2; do
	bc
	MOE_CUDA_QKV=split bc; echo "(MOE_CUDA_QKV=split)"
done
profile
date -u
