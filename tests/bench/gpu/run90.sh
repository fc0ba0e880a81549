#!/bin/sh
# Session 13 (H200), call 90: olmoe-1b-7b (seq 4096) with the session's
# final code beside torch_ref --preset olmoe (micro-batch 2) in the same
# call: our steps at micro-batch 3 (the largest that fits) and 2, and at
# micro-batch 3 with the session's switches off (MOE_CUDA_SUMSQ_BATCH=0
# MOE_CUDA_ROUTER_LD=0; olmoe has no shared experts, so the router is not
# merged there and reads rows of E either way).
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run90.txt
{
olmoe_step 3
olmoe_step 3 "MOE_CUDA_SUMSQ_BATCH=0 MOE_CUDA_ROUTER_LD=0"
echo "=== torch_ref --preset olmoe --modes best_c (B=2, T=4096)"
timeout 300 python3 $R/torch_ref.py --preset olmoe --modes best_c 2>&1 | grep -v Warning | tail -2
olmoe_step 2
olmoe_step 3
date -u
} 2>&1 | tee $O
