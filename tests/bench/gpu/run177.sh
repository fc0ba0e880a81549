#!/bin/sh
# Session 23 (H200), call 177: the final code (5ce63d2; the kernels of
# c7ab2e0) beside torch_ref best_c on one more card.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
bc
torch_seed
bc
} >$O/run177.txt 2>&1
cat $O/run177.txt
date -u
