#!/bin/sh
# Session 17 (H100), call 123: AdamW's loads and stores of m, v and the
# masters evict-first (MOE_CUDA_ADAMW_CS, default on in this build), the
# routing statistics on a side stream (MOE_CUDA_SIDE_STREAM, default on),
# and AdamW's loop steps a thread (MOE_CUDA_ADAMW_ITERS, an experiment
# switch: 4 the default), interleaved; the step tests; a kernel trace with
# PDL off; torch_ref best_c.  Everything in $OUT/run123.txt; summary last.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
S='s/"model".*"step_ms"/"step_ms"/; s/"tflops".*"loss"/"loss"/'
{
tk 120 test_kernels 'kernels/adamw*' | grep -E "\[FAIL|Synthesis"
tk 120 test_backend 'backend/opt_stream*' | grep -E "optimizer stream|\[FAIL|Synthesis"
tk 120 test_backend 'backend/training_steps_repeatable' | grep -E "four steps|\[FAIL|Synthesis"
bc_as base X=0
bc_as prev "MOE_CUDA_ADAMW_CS=0 MOE_CUDA_SIDE_STREAM=0"
bc_as cs0 MOE_CUDA_ADAMW_CS=0
bc_as side0 MOE_CUDA_SIDE_STREAM=0
bc_as it1 MOE_CUDA_ADAMW_ITERS=1
bc_as it2 MOE_CUDA_ADAMW_ITERS=2
bc_as base X=0
bc_as prev "MOE_CUDA_ADAMW_CS=0 MOE_CUDA_SIDE_STREAM=0"
echo "=== trace base pdl0"; ktr k123-pdl0 MOE_CUDA_PDL=0
torch_seed
bc_as base X=0
bc_as prev "MOE_CUDA_ADAMW_CS=0 MOE_CUDA_SIDE_STREAM=0"
} >$O/run123.txt 2>&1
grep -E "step_ms|^=== |span|FAIL|Synthesis|optimizer stream|four steps" $O/run123.txt | sed "$S" | tail -30
date -u
