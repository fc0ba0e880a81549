#!/bin/sh
# Session 21 (H200), call 156: the code as committed (7d17d62's kernels;
# the session's two experiments not kept) beside torch_ref best_c on this
# session's card, interleaved.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
bc
torch_seed
bc
torch_seed
bc
} >$O/run156.txt 2>&1
cat $O/run156.txt
date -u
