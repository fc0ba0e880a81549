#!/bin/sh
# Fused QK-norm + RoPE (more blocks in the backward) vs the two kernels, same call.
set -u
. "$(dirname "$0")/common.sh"
gpu_test test_kernels "Synthesis" 1
for v in fused split fused split; do
	echo "(MOE_CUDA_QKNORM_ROPE=$v)"
	MOE_CUDA_QKNORM_ROPE=$v profile "qknorm|rope|rmsnorm|total|wall"
done
bc
MOE_CUDA_QKNORM_ROPE=split bc; echo "(MOE_CUDA_QKNORM_ROPE=split)"
date -u
