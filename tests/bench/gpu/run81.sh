#!/bin/sh
# Session 12 (H100), call 81: the review's test helper (switch_pair: the
# three same-step comparisons of a switch) on the card: test_backend whole.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run81.txt
{
echo "=== test_backend (all, timeout 90)"
tk 90 test_backend '*' | grep -E "merged vs|yg free|router merged|\[FAIL|Assert|Synthesis" | tail -12
date -u
} 2>&1 | tee $O
