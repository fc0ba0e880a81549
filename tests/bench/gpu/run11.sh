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
torch_seed
bc
MOE_CUDA_EXPERT_FUSE=5 bc; echo "(MOE_CUDA_EXPERT_FUSE=5)"
profile
date -u
