#!/bin/sh
# Session 25 (H200), call 192: the final code beside torch_ref on a fourth
# card: ours, torch_ref, ours.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
bc
torch_seed
bc
} >$O/run192.txt 2>&1
cat $O/run192.txt
date -u
