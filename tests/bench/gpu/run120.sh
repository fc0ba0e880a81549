#!/bin/sh
# Session 16 (H100), call 120: the review's build (AdamW's plain and packed
# kernels as one template pair, the packing's chunk loop shared, the three
# step tests on one fixture): the AdamW kernel tests, the step tests,
# resume_gpu.sh, and two steps runs (the same loss as before: 8.7657).
set -u
. "$(dirname "$0")/common.sh"
tk 120 test_kernels 'kernels/adamw*' | grep -E "\[FAIL|Synthesis"
tk 120 test_backend 'backend/packed*' | grep -E "packed masters|\[FAIL|Synthesis"
tk 120 test_backend 'backend/opt_stream*' | grep -E "optimizer stream|\[FAIL|Synthesis"
tk 120 test_backend 'backend/training_steps_repeatable' | grep -E "four steps|\[FAIL|Synthesis"
echo "=== resume_gpu.sh"
MOE_BIN=$B/cmd MOE_BUILDDIR=$B MOE_SRCDIR=$PWD timeout 150 sh tests/train/resume_gpu.sh >/tmp/resume.out 2>&1
echo "rc=$?"
tail -1 /tmp/resume.out
bc | sed 's/"model".*"step_ms"/"step_ms"/; s/"tflops".*"loss"/"loss"/'
bc_as s15 "MOE_CUDA_PACKED_MASTERS=0 MOE_CUDA_OPT_STREAM=0" | sed 's/"model".*"step_ms"/"step_ms"/; s/"tflops".*"loss"/"loss"/'
date -u
