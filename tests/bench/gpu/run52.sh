#!/bin/sh
# Session 9 (H100), call 52: the grouped TMA forward / input gradient
# storing their full 64-row blocks from the registers, 16 bytes a thread
# after a quad transpose by shuffles (MOE_CUDA_TMA_EPI=v4), against the
# shared-memory + TMA-store epilogue (the default):
#  1. test_kernels grouped_tma* in both modes, test_backend with v4;
#  2. bench_kernels -t -B 16 in both modes, twice;
#  3. seed-base steps interleaved, torch_ref best_c once.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run52.txt
{
for e in tma v4; do
	echo "=== 1. test_kernels grouped_tma*, MOE_CUDA_TMA_EPI=$e"
	MOE_CUDA_TMA_EPI=$e tk 120 test_kernels 'kernels/grouped_tma*' | grep -E "\[PASS|\[FAIL|Assert|Synthesis" | tail -8
done
echo "=== 1. test_backend, MOE_CUDA_TMA_EPI=v4"
MOE_CUDA_TMA_EPI=v4 tk 90 test_backend '*' | grep -E "four steps twice, det|\[FAIL|Assert|Synthesis" | tail -8
date -u
for k in 1 2; do
	for e in tma v4; do
		echo "=== 2. bench_kernels -t -B 16, MOE_CUDA_TMA_EPI=$e"
		MOE_CUDA_TMA_EPI=$e timeout 60 $B/tests/bench/bench_kernels -t -B 16 2>&1 |
			grep -E "(fwd|dgrad) .*cfg 0  |dense|vs wgmma (fwd|dgrad)"
	done
done
date -u
echo "=== 3. seed-base steps"
for k in 1 2 3; do
	bc
	MOE_CUDA_TMA_EPI=v4 bc
	[ $k = 1 ] && torch_seed
done
date -u
} 2>&1 | tee $O
