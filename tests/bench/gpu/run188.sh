#!/bin/sh
# Session 25 (H200), call 188: the session's final kernels (0d0f866's
# attention, the weight gradient's uniform tile fields) beside torch_ref:
# seed-base steps around torch_ref --preset seed, then olmoe-1b-7b at
# seq 4096, micro-batch 4 (the largest that fits) around torch_ref
# --preset olmoe (its micro-batch 2).
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
bc
torch_seed
bc
olmoe_step 4
torch_olmoe
olmoe_step 4
} >$O/run188.txt 2>&1
cat $O/run188.txt
date -u
