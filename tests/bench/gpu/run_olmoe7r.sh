#!/bin/sh
# Session 7, H200: olmoe-1b-7b at seq 4096 with the final code, micro-batch
# 2 (torch_ref's) and 3 (our largest), beside torch_ref --preset olmoe
# --modes best_c in the same call.  Writes $OUT/run_olmoe7r.txt.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run_olmoe7r.txt
{
olmoe_step 2
olmoe_step 3
echo "=== torch_ref --preset olmoe --modes best_c (B=2, T=4096)"
timeout 300 python3 $R/torch_ref.py --preset olmoe --modes best_c 2>&1 | grep -v Warning | tail -2
olmoe_step 2
olmoe_step 3
date -u
} 2>&1 | tee $O
