#!/bin/sh
# Session 14 (H100), call 95: experiment builds outside the tree of the
# attention forward's softmax (attention_fa3.cuh's aff_softmax, compiled
# with AFF_EXP): 0 the tree's (ex2.approx on the multi-function unit), 9
# no exponential at all (wrong on purpose: the bound), 1 and 2 a quarter
# and a half of the exponentials as a degree-5 polynomial on the FMA units
# (FlashAttention-4's trick).  bench_kernels -a at seed-base, twice, and
# the forward's tests with variant 2.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run95.txt
X=$R/exp
{
for rep in 1 2; do
	for v in 0 9 1 2; do
		echo "=== bench_kernels -a -B 16, AFF_EXP=$v (round $rep)"
		LD_LIBRARY_PATH=$R/lib timeout 120 $X/bench_kernels_v$v -a -B 16 2>&1 | grep -E "fwd" | head -12
	done
done
echo "=== the forward's tests, AFF_EXP=2"
LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 200 $X/test_kernels_v2 --verbose --filter 'kernels/attention_fa3*_fwd' 2>&1 |
	grep -E "FAIL|Assert|Synthesis|error" | tail -12
date -u
} 2>&1 | tee $O
