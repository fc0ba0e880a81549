#!/bin/sh
# Session 14 (H100), call 94: SwiGLU's forward inside the routed experts'
# down GEMM (expert_down_swiglu_fwd, grouped_tma.cu SW 3).  Its tests
# (kernels/grouped_tma_swiglu_down, backend/down_swiglu_matches) and the
# TMA tests around it; the per-op profile with it and apart; seed-base
# steps interleaved with MOE_CUDA_DOWN_SWIGLU=0 (apart) and the 128 x 128
# tiles (MOE_CUDA_DOWN_SWIGLU_CFG=2), torch_ref in the same call.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run94.txt
{
echo "=== tests"
tk 200 test_kernels 'grouped_tma_swiglu_down' | grep -E "PASS|FAIL|Assert|relative error .*config 1 grid 0|Synthesis" | tail -12
tk 200 test_kernels 'grouped_tma*' | grep -E "\[FAIL|Assert|Synthesis" | tail -8
tk 120 test_backend 'down_swiglu_matches' | grep -E "SwiGLU inside|\[FAIL|Assert|Synthesis" | tail -6
tk 120 test_backend 'train_step_matches_cpu*' | grep -E "cosine over|\[FAIL|Assert|Synthesis" | tail -8
echo "=== profile, SwiGLU inside the down GEMM"
profile "grouped_fwd|swiglu|total|step"
echo "=== profile, apart"
MOE_CUDA_DOWN_SWIGLU=0 profile "grouped_fwd|swiglu|total|step"
bc
bc_as "DOWN_SWIGLU=0" "MOE_CUDA_DOWN_SWIGLU=0"
bc_as "DOWN_SWIGLU_CFG=2" "MOE_CUDA_DOWN_SWIGLU_CFG=2"
torch_seed
bc
bc_as "DOWN_SWIGLU=0" "MOE_CUDA_DOWN_SWIGLU=0"
bc_as "DOWN_SWIGLU_CFG=2" "MOE_CUDA_DOWN_SWIGLU_CFG=2"
bc
date -u
} 2>&1 | tee $O
