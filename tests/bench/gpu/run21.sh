#!/bin/sh
# Session 4, call 5 (the last of the session's device time): the final code
# (every engineer's session-4 commits) beside torch_ref best_c in one call,
# and test_backend (incl. the batched q/k/v test).
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run21.txt
{
bc
torch_seed
bc
gpu_test test_backend "q, k, v batched|PASS|FAIL|Synthesis" 10
date -u
} 2>&1 | tee $O
