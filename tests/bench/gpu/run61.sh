#!/bin/sh
# Session 10 (H100), call 61: the attention grids' group size (heads whose
# blocks are placed together, awg_group; 8 so far) for the forward
# (MOE_CUDA_FA3_G) and fa3f (MOE_CUDA_FA3F_G): the last group's long
# causal blocks end the kernel while other multiprocessors idle, smaller
# or larger groups trade that tail against L2 reuse.
#  1. attention_fa3f / attention tests with groups of 3 and 128;
#  2. bench_kernels -a at seed-base and the olmoe-like shape per size;
#  3. seed-base steps with the promising sizes.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run61.txt
{
for g in 3 128; do
	echo "=== 1. test_kernels attention_fa3f, attention, groups of $g"
	MOE_CUDA_FA3F_G=$g MOE_CUDA_FA3_G=$g tk 120 test_kernels "kernels/attention_fa3f" | grep -E "\[PASS|\[FAIL|Assert" | tail -3
	MOE_CUDA_FA3F_G=$g MOE_CUDA_FA3_G=$g tk 120 test_kernels "kernels/attention" | grep -E "\[PASS|\[FAIL|Assert" | tail -3
done
date -u
for g in 8 1 2 4 16 32 128 8; do
	echo "=== 2. groups of $g: seed-base"
	MOE_CUDA_FA3F_G=$g MOE_CUDA_FA3_G=$g timeout 60 $B/tests/bench/bench_kernels -a -B 16 2>&1 | grep -E "default"
done
for g in 8 2 4 16 8; do
	echo "=== 2. groups of $g: olmoe-like (B 8, T 4096, H 16, Dh 128)"
	MOE_CUDA_FA3F_G=$g MOE_CUDA_FA3_G=$g timeout 90 $B/tests/bench/bench_kernels -a -B 8 -T 4096 -H 16 -d 128 2>&1 | grep -E "default"
done
date -u
} 2>&1 | tee $O
