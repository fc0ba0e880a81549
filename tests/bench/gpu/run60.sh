#!/bin/sh
# Session 10 (H200: olmoe-1b-7b's fp32 state does not fit an H100), call 60:
# olmoe-1b-7b, seq 4096, with the session's defaults (fa3f by ticket, delta
# by rows, programmatic dependent launch) beside torch_ref --preset olmoe
# (micro-batch 2) in the same call; MOE_CUDA_PDL=0 with the session-9
# attention backward (fa3, delta by heads) for comparison.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run60.txt
{
olmoe_step 3
olmoe_step 3 "MOE_CUDA_PDL=0 MOE_CUDA_ATTENTION_BWD=fa3 MOE_CUDA_ATT_DELTA=heads"
olmoe_step 2
echo "=== torch_ref --preset olmoe --modes best_c (B=2, T=4096)"
timeout 300 python3 $R/torch_ref.py --preset olmoe --modes best_c 2>&1 | grep -v Warning | tail -2
olmoe_step 3
olmoe_step 3 "MOE_CUDA_PDL=0 MOE_CUDA_ATTENTION_BWD=fa3 MOE_CUDA_ATT_DELTA=heads"
olmoe_step 2
date -u
} 2>&1 | tee $O
