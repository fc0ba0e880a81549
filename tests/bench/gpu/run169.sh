#!/bin/sh
# Session 23 (H200), call 169 (the machine of call 168, warm): olmoe-1b-7b
# at seq 4096, micro-batch 4 (the largest that fits, session 17) with
# session 22's attention kernels, beside torch_ref --preset olmoe (its
# micro-batch 2), and once more after.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
olmoe_step 4
torch_olmoe
olmoe_step 4
} >$O/run169.txt 2>&1
cat $O/run169.txt
date -u
