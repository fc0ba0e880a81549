#!/bin/sh
# Session 17 (H200), call 129: the masters in chunks of mapped memory, the
# unused upper halves of packed ranges returned to the device: the packed
# and memory tests, the step tests, resume_gpu.sh; seed-base steps (peak
# memory) with and without (MOE_CUDA_VMM=0); olmoe-1b-7b at micro-batch 4
# (did not fit an H200 before) and 3 beside torch_ref --preset olmoe.
# Everything in $OUT/run129.txt; a summary printed last.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
tk 150 test_backend 'backend/packed*' | grep -E "packed masters|\[FAIL|Assert|Synthesis"
tk 120 test_backend 'backend/opt_stream*' | grep -E "optimizer stream|\[FAIL|Synthesis"
echo "=== resume_gpu.sh"
MOE_BIN=$B/cmd MOE_BUILDDIR=$B MOE_SRCDIR=$PWD timeout 150 sh tests/train/resume_gpu.sh >/tmp/resume.out 2>&1
echo "rc=$?"
tail -1 /tmp/resume.out
bc
bc_as vmm0 MOE_CUDA_VMM=0
olmoe_step 4
olmoe_step 3
echo "=== torch_ref --preset olmoe --modes best_c"
timeout 300 python3 $R/torch_ref.py --preset olmoe --modes best_c 2>&1 | grep -v Warning | tail -2
olmoe_step 4
} >$O/run129.txt 2>&1
grep -E "^=== |\[FAIL|Assert|Synthesis|packed masters|optimizer stream|rc=|ok:|step_ms|peak" $O/run129.txt |
	sed 's/"model".*"step_ms"/"step_ms"/; s/"tflops".*"peak_gib"/"peak_gib"/; s/"shape".*"step_ms"/"step_ms"/' | tail -40
date -u
