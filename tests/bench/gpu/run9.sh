#!/bin/sh
# Session 3, call 1: the session-2 review refactors on a GPU (test_kernels,
# test_backend), then today's baseline: ours beside torch_ref best_c, and one
# profiled step.
set -u
. "$(dirname "$0")/common.sh"
gpu_test test_kernels "Synthesis|FAIL" 6
gpu_test test_backend "expert GEMMs|cosine over|PASS|FAIL|Synthesis" 8
bc
torch_seed
profile
echo "=== kernels B=16"; timeout 100 $B/tests/bench/bench_kernels -B 16 2>/dev/null
which nsys ncu 2>/dev/null; ls /usr/local/cuda/bin | grep -E "nsys|ncu"
date -u
