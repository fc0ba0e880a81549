#!/bin/sh
# Session 19 (H200), call 143: the review's build: the refactored tests
# (attention_fa3f inlined, backend_refused) and common.sh's same_bytes
# helper (both builds' checkpoints of seed-3l.json).
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
echo "=== test_kernels attention_fa3f"
tk 120 test_kernels 'kernels/attention_fa3f' | grep -E "\[PASS|\[FAIL|Assert|Synthesis"
echo "=== test_backend *_refused, attention_variant_names_checked"
tk 60 test_backend 'backend/*_refused' | grep -E "\[PASS|\[FAIL|Assert|Synthesis"
tk 60 test_backend 'backend/attention_variant_names_checked' | grep -E "\[PASS|\[FAIL|Assert|Synthesis"
same_bytes $R/seed-3l.json
} >$O/run143.txt 2>&1
cat $O/run143.txt
date -u
