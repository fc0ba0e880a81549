#!/bin/sh
# Session 3, call 4: HEAD after the wgmma attention backward (test_kernels,
# test_backend), the step, a profile, and the dense cuBLAS GEMMs of the step
# shape by shape (bench_gemm).
set -u
. "$(dirname "$0")/common.sh"
gpu_test test_kernels "Synthesis|FAIL|fused|experts" 4
gpu_test test_backend "cosine over|overwrite, expert GEMMs 'wgmma'|PASS|FAIL|Synthesis" 8
bc
echo "=== bench_gemm"; timeout 120 $B/tests/bench/bench_gemm -B 16
bc
profile
date -u
