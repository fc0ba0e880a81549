#!/bin/sh
# Session 9 (H100), call 49, after call 48's upper bounds:
#  - fa3f* (the one-kernel attention backward): the fp32 dQ staging with
#    its columns swizzled by row (the unswizzled float2 stores of a warp's
#    8 rows fell on the same 8 banks: rows are 96 or 128 floats);
#  - grouped_tma.cu's forward / input gradient epilogue, MOE_CUDA_TMA_EPI:
#    tma2 (two barriers a block, as before), tma1 (one), direct (no shared
#    memory: bf16 pairs from the registers).
#  1. the fa3f tests and attention (every variant), grouped_tma in each
#     epilogue mode, test_backend;
#  2. bench_kernels -a and -t (each mode), twice;
#  3. seed-base steps interleaved; torch_ref best_c once.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run49.txt
{
echo "=== 1. test_kernels attention*"
tk 200 test_kernels 'kernels/attention*' | grep -E "\[PASS|\[FAIL|Assert|Synthesis" | tail -20
for e in tma2 tma1 direct; do
	echo "=== 1. test_kernels grouped_tma*, MOE_CUDA_TMA_EPI=$e"
	MOE_CUDA_TMA_EPI=$e tk 120 test_kernels 'kernels/grouped_tma*' | grep -E "\[PASS|\[FAIL|Assert|Synthesis" | tail -8
done
echo "=== 1. test_backend (all, timeout 90)"
tk 90 test_backend '*' | grep -E "four steps twice, det|\[FAIL|Assert|Synthesis" | tail -8
date -u
for k in 1 2; do
	echo "=== 2. bench_kernels -a -B 16"
	timeout 60 $B/tests/bench/bench_kernels -a -B 16 2>&1 | grep -E "bwd" | grep -E "fa3 |fa3f|default"
	for e in tma2 tma1 direct; do
		echo "=== 2. bench_kernels -t -B 16, MOE_CUDA_TMA_EPI=$e"
		MOE_CUDA_TMA_EPI=$e timeout 60 $B/tests/bench/bench_kernels -t -B 16 2>&1 | grep -E "(fwd|dgrad) .*cfg 0  |dense"
	done
done
date -u
echo "=== 3. seed-base steps"
for k in 1 2; do
	bc
	MOE_CUDA_ATTENTION_BWD=fa3fc bc
	MOE_CUDA_TMA_EPI=tma1 bc
	MOE_CUDA_TMA_EPI=direct bc
	[ $k = 1 ] && torch_seed
done
MOE_CUDA_ATTENTION_BWD=fa3f bc
bc
date -u
} 2>&1 | tee $O
