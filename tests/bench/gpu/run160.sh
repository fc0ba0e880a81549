#!/bin/sh
# Session 22 (H200), call 160: 5b27946 (the review's swiglu_bwd_rows kernel
# table; never run on a card before): test_kernels' swiglu tests, both GPU
# test binaries whole, the same checkpoint bytes as 7d17d62's moe-train
# (seed-3l, expert width 640, the 16-lane kernel at 6 vectors a lane pair),
# then seed-base steps beside torch_ref best_c, interleaved.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
echo "=== test_kernels swiglu*"
tk 100 test_kernels '*swiglu*' | grep -E "\[PASS|\[FAIL|Assert|Synthesis"
echo "=== test_kernels (all, timeout 250)"
tk 250 test_kernels '*' | grep -E "\[FAIL|Assert|Synthesis" | tail -20
echo "=== test_backend (all, timeout 120)"
tk 120 test_backend '*' | grep -E "\[FAIL|Assert|Synthesis" | tail -8
same_bytes $R/seed-3l.json
bc
torch_seed
bc
torch_seed
bc
} >$O/run160.txt 2>&1
cat $O/run160.txt
date -u
