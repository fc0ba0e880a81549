#!/bin/sh
# Session 3, call 7 (the headline): test_kernels; seed-base B=16 beside
# torch_ref best_c; the session-3 switches turned back (the memset, the v1
# attention kernels, scalar AdamW, cuBLAS router, wgmma expert GEMMs); a
# profile; full recompute.
set -u
. "$(dirname "$0")/common.sh"
gpu_test test_kernels "Synthesis|FAIL" 6
bc
echo "=== torch_ref best_c B=16"; timeout 240 python3 $R/torch_ref.py --preset seed --modes best_c 2>&1 | grep -v Warning | tail -2
bc
MOE_CUDA_GRAD_OVERWRITE=0 MOE_CUDA_ATTENTION_FWD=v1 MOE_CUDA_ATTENTION_BWD=v1 MOE_CUDA_ADAMW=scalar \
	MOE_CUDA_NARROW=cublas MOE_CUDA_GROUPED=wgmma bc; echo "(session-3 switches off)"
bc -R; echo "(--recompute full)"
echo "=== profile B=16"; timeout 100 $B/tests/bench/bench_cuda -m $M -B 16 -n 1 -w 2 -p 2>/dev/null | tail -n +2
date -u
