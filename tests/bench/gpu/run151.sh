#!/bin/sh
# Session 20 (H200), call 151: the review's build (qk_fwd takes the second
# tensor itself; test_kernels' attention_fa3f cases as a table): the fa3f
# and qknorm tests, test_backend whole, the same checkpoint bytes as
# 7326c8c's moe-train (seed-3l.json).
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
tk 150 test_kernels 'kernels/attention_fa3f' | grep -E "\[PASS|\[FAIL|Assert|Synthesis"
tk 150 test_kernels 'kernels/qknorm*' | grep -E "\[PASS|\[FAIL|Assert|Synthesis"
echo "=== test_backend (all)"
tk 120 test_backend '*' | grep -E "\[FAIL|Assert|Synthesis" | tail -8
same_bytes $R/seed-3l.json
} >$O/run151.txt 2>&1
cat $O/run151.txt
date -u
