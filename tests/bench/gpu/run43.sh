#!/bin/sh
# Session 7, the last H100 call, binaries of af2cb90 (the final code): both
# GPU test binaries whole, the GPU reproducibility / resume test, and the
# default step beside torch_ref best_c.  Writes $OUT/run43.txt.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run43.txt
{
echo "=== test_kernels (all, timeout 200)"
tk 200 test_kernels '*' | grep -E "\[FAIL|Assert|Synthesis" | tail -20
echo "=== test_backend (all, timeout 90)"
tk 90 test_backend '*' | grep -E "cosine over|four steps|\[FAIL|Assert|Synthesis" | tail -20
echo "=== resume_gpu.sh"
MOE_BIN=$B/cmd MOE_BUILDDIR=$B MOE_SRCDIR=$PWD timeout 200 sh tests/train/resume_gpu.sh; echo "rc=$?"
bc
torch_seed
bc
date -u
} 2>&1 | tee $O
