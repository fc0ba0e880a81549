#!/bin/sh
# Session 11 (H100), call 70: the new smaller-batch test, then both GPU
# test binaries whole and resume_gpu.sh on the final code.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run70.txt
{
tk 120 test_backend 'backend/smaller_batch_after_larger' | grep -E "smaller batch|\[FAIL|Assert|Synthesis" | tail -6
suites
date -u
} 2>&1 | tee $O
