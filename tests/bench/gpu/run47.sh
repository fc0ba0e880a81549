#!/bin/sh
# Session 9 (H100), call 47: the grouped TMA GEMMs' tail warpgroups (a
# cooperative warpgroup with no rows inside the expert issues no MMAs;
# MOE_CUDA_TMA_TAILSKIP=0 issues them as before), and the attention
# variants left opt-in in session 6, as seed-base steps:
#  1. test_kernels grouped_tma* alone, then both GPU test binaries whole;
#  2. bench_kernels -t -B 16 (balanced and -s 1 skewed routing), default
#     against MOE_CUDA_TMA_TAILSKIP=0;
#  3. seed-base steps interleaved: default, TAILSKIP=0, fa3pk128 / fa3p
#     forwards, fa3fc3 backward; torch_ref best_c in the middle;
#  4. one profiled step.
# Writes $OUT/run47.txt as it goes (the call may be cut off by the budget).
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run47.txt
{
echo "=== 1. test_kernels grouped_tma*"
tk 120 test_kernels 'kernels/grouped_tma*' | grep -E "\[PASS|\[FAIL|Assert|Synthesis" | tail -12
echo "=== 1. test_kernels (all, timeout 200)"
tk 200 test_kernels '*' | grep -E "\[FAIL|Assert|Synthesis" | tail -20
echo "=== 1. test_backend (all, timeout 90)"
tk 90 test_backend '*' | grep -E "cosine over|four steps|\[FAIL|Assert|Synthesis" | tail -20
date -u
for s in 0 1; do
	echo "=== 2. bench_kernels -t -B 16 -s $s (default: tail warpgroups skip)"
	timeout 60 $B/tests/bench/bench_kernels -t -B 16 -s $s 2>&1 | grep -E "cfg 0|dense|routing:"
	echo "=== 2. bench_kernels -t -B 16 -s $s, MOE_CUDA_TMA_TAILSKIP=0"
	MOE_CUDA_TMA_TAILSKIP=0 timeout 60 $B/tests/bench/bench_kernels -t -B 16 -s $s 2>&1 |
		grep -E "cfg 0|dense|routing:"
done
date -u
echo "=== 3. seed-base steps"
for k in 1 2; do
	bc
	MOE_CUDA_TMA_TAILSKIP=0 bc
	MOE_CUDA_ATTENTION_FWD=fa3pk128 bc
	MOE_CUDA_ATTENTION_BWD=fa3fc3 bc
	[ $k = 1 ] && torch_seed
done
MOE_CUDA_ATTENTION_FWD=fa3p bc
MOE_CUDA_ATTENTION_FWD=fa3pk128 MOE_CUDA_ATTENTION_BWD=fa3fc3 bc
bc
date -u
profile
date -u
} 2>&1 | tee $O
