#!/bin/sh
# Session 11 (H100), call 69: the routed experts' gather inside the wgmma
# GEMMs' loads (MOE_CUDA_EXPERT_FUSE 1: gate_up forward with SwiGLU in its
# epilogue; 4: gate_up weight gradient; 5 both), measured again against
# the default TMA kernels with the gather as its own kernel (sessions 4-6
# measured them against the wgmma kernels), seed-base steps interleaved.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run69.txt
{
for k in 1 2; do
	bc
	MOE_CUDA_EXPERT_FUSE=1 bc
	MOE_CUDA_EXPERT_FUSE=4 bc
	MOE_CUDA_EXPERT_FUSE=5 bc
done
bc
date -u
} 2>&1 | tee $O
