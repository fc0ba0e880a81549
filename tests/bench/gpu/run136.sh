#!/bin/sh
# Session 18 (H200), call 136: call 134's experiment build (the reserve with
# AdamW held to as many multiprocessors; tests/bench/gpu/s18-held-adamw.patch
# on 09bd538) at olmoe-1b-7b, seq 4096, micro-batch 4, where AdamW moves
# 193 GB a step: the default, one stream, held to 24, 32 and 48,
# interleaved.  Everything in $OUT/run136.txt.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
olmoe_step 4 X=1
olmoe_step 4 "MOE_CUDA_SM_RESERVE=32 MOE_CUDA_ADAMW_SMS=32"
olmoe_step 4 MOE_CUDA_OPT_STREAM=0
olmoe_step 4 "MOE_CUDA_SM_RESERVE=24 MOE_CUDA_ADAMW_SMS=24"
olmoe_step 4 "MOE_CUDA_SM_RESERVE=48 MOE_CUDA_ADAMW_SMS=48"
olmoe_step 4 X=1
olmoe_step 4 "MOE_CUDA_SM_RESERVE=32 MOE_CUDA_ADAMW_SMS=32"
} >$O/run136.txt 2>&1
grep -E "^=== |step_ms|peak" $O/run136.txt |
	sed 's/"model".*"step_ms"/"step_ms"/; s/"tflops".*"peak_gib"/"peak_gib"/' | tail -30
date -u
