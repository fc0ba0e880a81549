#!/bin/sh
# Session 9 (H100), call 50: fa3f* with each warpgroup's dQ part over its
# own 64 keys (no barrier of both warpgroups before the dQ product; at Dh 96
# no zero columns), warpgroup 0's part handed to 1 through the dQ buffer.
#  1. the attention tests one at a time under timeout (a hang shows which);
#     test_backend with MOE_CUDA_ATTENTION_BWD=fa3f (whole steps on it);
#  2. bench_kernels -a at seed-base and at the olmoe-like shape, twice;
#  3. seed-base steps interleaved: fa3 (the default), fa3f, fa3fc3;
#     torch_ref best_c once.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run50.txt
{
for t in attention_fa3f attention_fa3f3 attention_fa3fa attention_fa3fc attention_fa3fc3; do
	echo "=== 1. test_kernels $t"
	tk 90 test_kernels "kernels/$t" | grep -E "\[PASS|\[FAIL|Assert|Synthesis" | tail -6
done
echo "=== 1. test_kernels attention, attention_large, attention_fa3"
tk 200 test_kernels 'kernels/attention@(|_large|_fa3)' | grep -E "\[PASS|\[FAIL|Assert|Synthesis" | tail -6
echo "=== 1. test_backend, MOE_CUDA_ATTENTION_BWD=fa3f"
MOE_CUDA_ATTENTION_BWD=fa3f tk 90 test_backend '*' | grep -E "cosine over|four steps twice, det|\[FAIL|Assert|Synthesis" | tail -8
date -u
for k in 1 2; do
	echo "=== 2. bench_kernels -a -B 16 (seed-base)"
	timeout 60 $B/tests/bench/bench_kernels -a -B 16 2>&1 | grep -E "bwd" | grep -E "fa3 |fa3f|default"
	echo "=== 2. bench_kernels -a -B 8 -T 4096 -H 16 -d 128 (olmoe-like)"
	timeout 90 $B/tests/bench/bench_kernels -a -B 8 -T 4096 -H 16 -d 128 2>&1 | grep -E "bwd" | grep -E "fa3 |fa3f|default"
done
date -u
echo "=== 3. seed-base steps"
for k in 1 2 3; do
	bc
	MOE_CUDA_ATTENTION_BWD=fa3f bc
	MOE_CUDA_ATTENTION_BWD=fa3fc3 bc
	[ $k = 1 ] && torch_seed
done
date -u
} 2>&1 | tee $O
