#!/bin/sh
# Session 20 (H200), call 144: the grouped TMA GEMMs with consumer
# warpgroup 1 started MOE_CUDA_TMA_STAGGER k-slices behind warpgroup 0 (so
# that one warpgroup's epilogue overlaps the other's MMAs): correctness
# (test_kernels grouped_tma*, bench_kernels' bitwise check against wgmma),
# the kernels at each stagger interleaved, then seed-base steps.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
for d in 0 2 4; do
	echo "=== test_kernels grouped_tma*, stagger $d"
	MOE_CUDA_TMA_STAGGER=$d tk 200 test_kernels 'kernels/grouped_tma*' | grep -E "\[PASS|\[FAIL|Assert|Synthesis"
done
for d in 0 1 2 3 4 0 2 3; do
	echo "=== bench_kernels -t -B 16, stagger $d"
	MOE_CUDA_TMA_STAGGER=$d timeout 90 $B/tests/bench/bench_kernels -t -B 16 2>&1 | sed '/^attention/q' |
		grep -E "cfg 0|dense|bitwise|differ|fell|equal"
done
for d in 0 2 3 4 0 2 3 4; do
	bc_as "stagger $d" "MOE_CUDA_TMA_STAGGER=$d"
done
} >$O/run144.txt 2>&1
cat $O/run144.txt
date -u
