#!/bin/sh
# Session 7, call 39 (H100): the final code (binaries of a clean checkout
# of main): both GPU test binaries whole, the GPU reproducibility / resume
# test, and one default step.  Writes $OUT/run39.txt.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run39.txt
{
echo "=== test_kernels (all, timeout 200)"
tk 200 test_kernels '*' | grep -E "\[PASS|\[FAIL|Assert|Synthesis" | tail -60
echo "=== test_backend (all, timeout 90)"
tk 90 test_backend '*' | grep -E "cosine over|top-k choices|four steps|\[PASS|\[FAIL|Assert|Synthesis" | tail -40
echo "=== resume_gpu.sh"
MOE_BIN=$B/cmd MOE_BUILDDIR=$B MOE_SRCDIR=$PWD timeout 200 sh tests/train/resume_gpu.sh; echo "rc=$?"
bc
date -u
} 2>&1 | tee $O
