#!/bin/sh
# Session 3, call 7 (the headline): test_kernels; seed-base B=16 beside
# torch_ref best_c; the session-3 switches turned back (the memset, the v1
# attention kernels, scalar AdamW, cuBLAS router, wgmma expert GEMMs); a
# profile; full recompute.
set -u
. "$(dirname "$0")/common.sh"
gpu_test test_kernels "Synthesis|FAIL" 6
bc
torch_seed
bc
MOE_CUDA_GRAD_OVERWRITE=0 MOE_CUDA_ATTENTION_FWD=v1 MOE_CUDA_ATTENTION_BWD=v1 MOE_CUDA_ADAMW=scalar \
	MOE_CUDA_NARROW=cublas MOE_CUDA_GROUPED=wgmma bc; echo "(session-3 switches off)"
bc -R; echo "(--recompute full)"
profile
date -u
