#!/bin/sh
# Session 17 (H100), call 126: the shared-memory carveout.  overlap_probe
# (AdamW in quarter-layer launches beside the gate_up forward GEMM) and
# steps with AdamW's kernels (MOE_CUDA_ADAMW_CARVE=1) or every kernel
# launched by moe_launch (MOE_CUDA_CARVE=1) preferring the largest
# shared-memory carveout, so that their blocks and a GEMM's can share a
# multiprocessor without reconfiguring it; with the lean GEMM and AdamW's
# 64-thread blocks (experiment switches).  Everything in $OUT/run126.txt.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
S='s/"model".*"step_ms"/"step_ms"/; s/"tflops".*"loss"/"loss"/'
L="MOE_CUDA_GT_LEAN=1 MOE_CUDA_ADAMW_TPB=64"
{
for v in "X=0" "MOE_CUDA_ADAMW_CARVE=1" "$L" "$L MOE_CUDA_ADAMW_CARVE=1" "MOE_CUDA_CARVE=1" "$L MOE_CUDA_CARVE=1"; do
	echo "--- probe $v"
	env $v timeout 60 $R/ov 40
done
bc_as base X=0
bc_as acarve MOE_CUDA_ADAMW_CARVE=1
bc_as carve MOE_CUDA_CARVE=1
bc_as lean_acarve "$L MOE_CUDA_ADAMW_CARVE=1"
bc_as lean_carve "$L MOE_CUDA_CARVE=1"
bc_as base X=0
bc_as acarve MOE_CUDA_ADAMW_CARVE=1
bc_as carve MOE_CUDA_CARVE=1
bc_as lean_acarve "$L MOE_CUDA_ADAMW_CARVE=1"
bc_as lean_carve "$L MOE_CUDA_CARVE=1"
} >$O/run126.txt 2>&1
grep -E "step_ms|^--- |gemm alone" $O/run126.txt | sed "$S" | tail -40
date -u
