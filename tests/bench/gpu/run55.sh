#!/bin/sh
# Session 10 (H100), call 55: fa3f (the one-kernel attention backward) with
# its blocks placed by ticket (awg_ticket: no reliance on launch-order
# dispatch) and the default at head sizes 96 and 128; where the step's
# GPU time goes between kernels (ktrace.so, a CUPTI injection library).
#  1. the attention tests, test_backend (default: fa3f);
#  2. seed-base steps interleaved: default (fa3f) and MOE_CUDA_ATTENTION_BWD=fa3;
#  3. one traced run (3 steps): busy and idle time of the last full step.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run55.txt
{
for t in attention_fa3f attention_fa3fc attention attention_large; do
	echo "=== 1. test_kernels $t"
	tk 120 test_kernels "kernels/$t" | grep -E "\[PASS|\[FAIL|Assert|Synthesis" | tail -6
done
echo "=== 1. test_backend (default)"
tk 90 test_backend '*' | grep -E "attention bwd|cosine over|four steps twice, det|\[FAIL|Assert|Synthesis" | tail -8
date -u
echo "=== 2. seed-base steps"
for k in 1 2; do
	bc
	MOE_CUDA_ATTENTION_BWD=fa3 bc
done
date -u
echo "=== 3. ktrace, bench_cuda -n 3 -w 2 (default)"
CUDA_INJECTION64_PATH=$R/ktrace.so KTRACE_OUT=${OUT:-/tmp}/kt55.csv timeout 120 \
	$B/tests/bench/bench_cuda -m $M -B 16 -n 3 -w 2 2>&1 | tail -2
python3 $R/ktrace.py ${OUT:-/tmp}/kt55.csv
gzip -f ${OUT:-/tmp}/kt55.csv
date -u
} 2>&1 | tee $O
