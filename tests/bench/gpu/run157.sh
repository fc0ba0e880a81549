#!/bin/sh
# Session 21 (H200), call 157: the review's build (fa3pk128's producer loads
# Q through one lambda instead of two copies of the block; its machine code
# differs from 7d17d62's in two moves' order): the attention tests,
# test_backend whole, the same checkpoint bytes as 7d17d62's moe-train,
# seed-base steps beside 7d17d62's bench_cuda; olmoe-1b-7b at micro-batch 4
# beside torch_ref --preset olmoe.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
echo "=== test_kernels attention*"
tk 200 test_kernels 'kernels/attention*' | grep -E "\[PASS|\[FAIL|Assert|Synthesis"
echo "=== test_backend (all)"
tk 120 test_backend '*' | grep -E "\[FAIL|Assert|Synthesis" | tail -8
same_bytes $R/seed-3l.json
bc
bc_old
olmoe_step 4
torch_olmoe
} >$O/run157.txt 2>&1
cat $O/run157.txt
date -u
