#!/bin/sh
# Session 3, call 5: the router through the one-group wgmma kernel, the
# linear weight-gradient fix (beta 1 for small gradients) and the shared
# wgmma.cuh on a GPU (test_kernels, test_backend); bench_gemm; the step
# default vs MOE_CUDA_NARROW=cublas, beside torch_ref; a profile.
set -u
. "$(dirname "$0")/common.sh"
gpu_test test_kernels "Synthesis|FAIL" 6
gpu_test test_backend "cosine over|PASS|FAIL|Synthesis|relative error" 12
echo "=== bench_gemm"; timeout 120 $B/tests/bench/bench_gemm -B 16
bc
MOE_CUDA_NARROW=cublas bc; echo "(MOE_CUDA_NARROW=cublas)"
torch_seed
bc
profile
date -u
