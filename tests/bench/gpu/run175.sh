#!/bin/sh
# Session 23 (H200), call 175: olmoe-1b-7b at seq 4096, micro-batch 4 (the
# largest that fits, session 17) with the final code (c7ab2e0: the expert
# GEMMs' last row tile through TMA), beside torch_ref --preset olmoe (its
# micro-batch 2), and once more after.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
olmoe_step 4
torch_olmoe
olmoe_step 4
} >$O/run175.txt 2>&1
cat $O/run175.txt
date -u
