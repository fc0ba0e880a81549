#!/bin/sh
# Session 3, call 3: gradients by overwrite, rmsnorm_bwd_add and the combine
# with the residual on a GPU (test_kernels, test_backend), then the step:
# default, with the memset (MOE_CUDA_GRAD_OVERWRITE=0), with the expert
# fusions 5 (forward + gate_up wgrad) and 1, beside torch_ref best_c; a profile.
set -u
. "$(dirname "$0")/common.sh"
gpu_test test_kernels "Synthesis|FAIL|fused|experts" 8
gpu_test test_backend "expert GEMMs|cosine over|overwrite|fused|PASS|FAIL|Synthesis|never|difference" 16
bc
MOE_CUDA_GRAD_OVERWRITE=0 bc; echo "(MOE_CUDA_GRAD_OVERWRITE=0)"
MOE_CUDA_EXPERT_FUSE=5 bc; echo "(MOE_CUDA_EXPERT_FUSE=5)"
MOE_CUDA_EXPERT_FUSE=1 bc; echo "(MOE_CUDA_EXPERT_FUSE=1)"
echo "=== torch_ref best_c B=16"; timeout 240 python3 $R/torch_ref.py --preset seed --modes best_c 2>&1 | grep -v Warning | tail -2
bc
MOE_CUDA_EXPERT_FUSE=5 bc; echo "(MOE_CUDA_EXPERT_FUSE=5)"
echo "=== profile B=16"; timeout 100 $B/tests/bench/bench_cuda -m $M -B 16 -n 1 -w 2 -p 2>/dev/null | tail -n +2
date -u
