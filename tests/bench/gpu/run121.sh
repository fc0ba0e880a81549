#!/bin/sh
# Session 17 (H100), call 121: exploration of the forward's memory traffic
# beside AdamW on its stream: SwiGLU in the gate_up GEMM's epilogue
# (MOE_CUDA_TMA_FUSE=1) and AdamW's grid capped (MOE_CUDA_ADAMW_GRID, an
# experiment switch of this build only), interleaved with the default;
# torch_ref best_c.  Everything in $OUT/run121.txt; a summary printed last.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
S='s/"model".*"step_ms"/"step_ms"/; s/"tflops".*"loss"/"loss"/'
{
bc_as base X=0
bc_as fuse1 MOE_CUDA_TMA_FUSE=1
bc_as cap66 MOE_CUDA_ADAMW_GRID=66
bc_as cap132 MOE_CUDA_ADAMW_GRID=132
bc_as cap264 MOE_CUDA_ADAMW_GRID=264
bc_as base X=0
bc_as fuse1 MOE_CUDA_TMA_FUSE=1
bc_as cap528 MOE_CUDA_ADAMW_GRID=528
bc_as fuse1cap132 "MOE_CUDA_TMA_FUSE=1 MOE_CUDA_ADAMW_GRID=132"
bc_as s15 "MOE_CUDA_PACKED_MASTERS=0 MOE_CUDA_OPT_STREAM=0"
torch_seed
bc_as base X=0
} >$O/run121.txt 2>&1
grep -E "step_ms|best_c|tok" $O/run121.txt | sed "$S" | tail -20
date -u
