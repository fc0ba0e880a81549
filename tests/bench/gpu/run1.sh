#!/bin/sh
# Lead's GPU call 1: correctness of the CUDA backend after the memory changes,
# seed-base B=16 step time/memory with a profile, 300-step curves.
set -u
. "$(dirname "$0")/common.sh"
gpu_test test_kernels "Synthesis|FAIL" 4
gpu_test test_backend "." 25
bc
profile
echo "=== curves"; CURVE_DATA=$R/shards timeout 200 sh tests/train/gpu.sh $B 0 2>&1 | tail -45
date -u
