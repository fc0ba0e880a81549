#!/bin/sh
# Session 17 (H100), call 124: room for AdamW beside the forward's grouped
# GEMMs: the forward's 128 x 256 grouped kernel at 160 registers a thread
# (MOE_CUDA_GT_LEAN=1, an experiment switch; 4,096 registers of each
# multiprocessor left free) with AdamW in blocks of 64 threads
# (MOE_CUDA_ADAMW_TPB, experiment) that fit there; controls; AdamW's
# arithmetic now pinned to the CPU reference's roundings (kernels/adamw*
# bit for bit); the grouped kernels' tests with the lean kernel; a trace.
# Everything in $OUT/run124.txt; summary last.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
S='s/"model".*"step_ms"/"step_ms"/; s/"tflops".*"loss"/"loss"/'
{
tk 120 test_kernels 'kernels/adamw*' | grep -E "\[FAIL|Synthesis|relative error [1-9]"
MOE_CUDA_GT_LEAN=1 tk 200 test_kernels 'kernels/grouped_tma' | grep -E "\[FAIL|Synthesis"
tk 120 test_backend 'backend/opt_stream*' | grep -E "optimizer stream|\[FAIL|Synthesis"
bc_as base X=0
bc_as lean64 "MOE_CUDA_GT_LEAN=1 MOE_CUDA_ADAMW_TPB=64"
bc_as lean "MOE_CUDA_GT_LEAN=1"
bc_as tpb64 "MOE_CUDA_ADAMW_TPB=64"
bc_as lean64i1 "MOE_CUDA_GT_LEAN=1 MOE_CUDA_ADAMW_TPB=64 MOE_CUDA_ADAMW_ITERS=1"
bc_as lean64i16 "MOE_CUDA_GT_LEAN=1 MOE_CUDA_ADAMW_TPB=64 MOE_CUDA_ADAMW_ITERS=16"
bc_as base X=0
bc_as lean64 "MOE_CUDA_GT_LEAN=1 MOE_CUDA_ADAMW_TPB=64"
bc_as prev "MOE_CUDA_ADAMW_CS=0 MOE_CUDA_SIDE_STREAM=0"
echo "=== trace lean64 pdl0"; ktr k124-lean64 MOE_CUDA_GT_LEAN=1 MOE_CUDA_ADAMW_TPB=64 MOE_CUDA_PDL=0
bc_as base X=0
bc_as lean64 "MOE_CUDA_GT_LEAN=1 MOE_CUDA_ADAMW_TPB=64"
} >$O/run124.txt 2>&1
grep -E "step_ms|^=== |span|FAIL|Synthesis|optimizer stream|relative error" $O/run124.txt | sed "$S" | tail -30
date -u
