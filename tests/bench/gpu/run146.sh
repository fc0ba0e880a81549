#!/bin/sh
# Session 20 (H200), call 146: the final build (36c0e29) beside torch_ref on
# a fresh card: seed-base (seq 2048, micro-batch 16) interleaved with
# torch_ref --preset seed best_c, then olmoe-1b-7b (seq 4096, micro-batch 4)
# beside torch_ref --preset olmoe best_c.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
bc
torch_seed
bc
torch_seed
bc
olmoe_step 4
torch_olmoe
olmoe_step 4
} >$O/run146.txt 2>&1
cat $O/run146.txt
date -u
