#!/bin/sh
# Session 18 (H200), call 138: the review's build (packed_hit also gives
# hi for o_adamw; one bytes_taken for the allocations' accounting): the
# whole of test_backend (packed masters, memory returned, the optimizer
# stream, the step tests) and a seed-base step's loss and peak.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
echo "=== test_backend (all)"
tk 90 test_backend '*' | grep -E "packed masters|optimizer stream|\[FAIL|Assert|Synthesis" | tail -12
bc
} >$O/run138.txt 2>&1
grep -E "^=== |packed masters|\[FAIL|Assert|Synthesis|step_ms" $O/run138.txt |
	sed 's/"model".*"step_ms"/"step_ms"/; s/"tflops".*"peak_gib"/"peak_gib"/'
date -u
