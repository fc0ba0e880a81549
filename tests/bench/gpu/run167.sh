#!/bin/sh
# Session 22 (H200), call 167: fa3pk128 / fa3 the defaults at Dh 64 (and the
# mask change of call 166 in wg, wge's and fa3's dQ kernels): test_backend
# (the new train_step_matches_cpu_dh64 and the rest), the attention tests,
# the Dh 64 kernels by default.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
echo "=== test_backend (all)"
tk 150 test_backend '*' | grep -E "cosine over|\[FAIL|Assert|Synthesis" | tail -12
echo "=== test_kernels attention*"
tk 200 test_kernels 'kernels/attention*' | grep -E "\[FAIL|Assert|Synthesis"
timeout 60 $B/tests/bench/bench_kernels -a -B 16 -T 2048 -H 12 -d 64 2>&1 | grep -E "default"
} >$O/run167.txt 2>&1
cat $O/run167.txt
date -u
