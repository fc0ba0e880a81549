#!/bin/sh
# Session 9, H200: olmoe-1b-7b at seq 4096 with 2917cf5's code, micro-batch
# 2 (torch_ref's) and 3 (our largest), the attention backward fa3 (the
# default) against fa3f (opt-in), beside torch_ref --preset olmoe --modes
# best_c in the same call.  Writes $OUT/run54.txt as it goes.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run54.txt
{
olmoe_step 3
olmoe_step 3 MOE_CUDA_ATTENTION_BWD=fa3f
olmoe_step 2
olmoe_step 2 MOE_CUDA_ATTENTION_BWD=fa3f
echo "=== torch_ref --preset olmoe --modes best_c (B=2, T=4096)"
timeout 300 python3 $R/torch_ref.py --preset olmoe --modes best_c 2>&1 | grep -v Warning | tail -2
olmoe_step 3
olmoe_step 3 MOE_CUDA_ATTENTION_BWD=fa3f
date -u
} 2>&1 | tee $O
