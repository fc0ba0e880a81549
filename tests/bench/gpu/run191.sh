#!/bin/sh
# Session 25 (H200), call 191: the final code (428f654; its kernels as in
# calls 188-189) beside torch_ref twice on a third card: ours, torch_ref,
# ours, torch_ref, ours.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
bc
torch_seed
bc
torch_seed
bc
} >$O/run191.txt 2>&1
cat $O/run191.txt
date -u
