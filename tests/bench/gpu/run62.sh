#!/bin/sh
# Session 10 (H200), call 62: fa3f's grid in groups of about 64 blocks
# (2 heads at T 4096, 4 at 2048; 8 before) at olmoe-1b-7b, beside
# torch_ref --preset olmoe in the same call:
#  1. the fa3f and attention tests;
#  2. bench_kernels -a at olmoe's shape (B 3, T 4096, H 16, Dh 128), the
#     new grouping and MOE_CUDA_FA3F_G=8;
#  3. olmoe-1b-7b steps, micro-batch 3 (new, 8 interleaved) and 2, torch_ref.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run62.txt
{
for t in attention_fa3f attention attention_large; do
	echo "=== 1. test_kernels $t"
	tk 120 test_kernels "kernels/$t" | grep -E "\[PASS|\[FAIL|Assert" | tail -3
done
for g in "" 8 "" 8; do
	echo "=== 2. bench_kernels -a, olmoe shape, MOE_CUDA_FA3F_G=$g"
	MOE_CUDA_FA3F_G=$g timeout 90 $B/tests/bench/bench_kernels -a -B 3 -T 4096 -H 16 -d 128 2>&1 | grep -E "bwd fa3f .default"
done
date -u
olmoe_step 3
olmoe_step 3 MOE_CUDA_FA3F_G=8
olmoe_step 2
echo "=== torch_ref --preset olmoe --modes best_c (B=2, T=4096)"
timeout 300 python3 $R/torch_ref.py --preset olmoe --modes best_c 2>&1 | grep -v Warning | tail -2
olmoe_step 3
olmoe_step 3 MOE_CUDA_FA3F_G=8
olmoe_step 2
date -u
} 2>&1 | tee $O
