#!/bin/sh
# Session 9 (H100), call 53: fa3f* software-pipelined by one tile: round r
# stores tile r's dS^T and issues tile r - 1's dQ product once both
# warpgroups' dS^T of tile r - 1 are in place (an mbarrier per dS^T
# buffer), so no barrier of both warpgroups sits in the round.
#  1. the attention tests one at a time under timeout (a hang shows which);
#     test_backend with MOE_CUDA_ATTENTION_BWD=fa3f;
#  2. bench_kernels -a at seed-base (twice) and at the olmoe-like shape;
#  3. seed-base steps interleaved: fa3 (the default) and fa3f; torch_ref once.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run53.txt
{
for t in attention_fa3f attention_fa3f3 attention_fa3fa attention_fa3fc attention_fa3fc3 attention attention_large; do
	echo "=== 1. test_kernels $t"
	tk 120 test_kernels "kernels/$t" | grep -E "\[PASS|\[FAIL|Assert|Synthesis" | tail -6
done
echo "=== 1. test_backend, MOE_CUDA_ATTENTION_BWD=fa3f"
MOE_CUDA_ATTENTION_BWD=fa3f tk 90 test_backend '*' | grep -E "cosine over|four steps twice, det|\[FAIL|Assert|Synthesis" | tail -8
date -u
for k in 1 2; do
	echo "=== 2. bench_kernels -a -B 16 (seed-base)"
	timeout 60 $B/tests/bench/bench_kernels -a -B 16 2>&1 | grep -E "bwd" | grep -E "fa3 |fa3f|fu4g|default"
done
echo "=== 2. bench_kernels -a -B 8 -T 4096 -H 16 -d 128 (olmoe-like)"
timeout 90 $B/tests/bench/bench_kernels -a -B 8 -T 4096 -H 16 -d 128 2>&1 | grep -E "bwd" | grep -E "fa3 |fa3f|default"
date -u
echo "=== 3. seed-base steps"
for k in 1 2 3; do
	bc
	MOE_CUDA_ATTENTION_BWD=fa3f bc
	[ $k = 1 ] && torch_seed
done
date -u
} 2>&1 | tee $O
