#!/bin/sh
# Session 8 (H100), the one call of the session: the wide-row norm kernels
# of 341376c (b) against the previous binaries of 7acd5f6's code (b0):
#  1. the rmsnorm and qknorm_rope tests (2304-16384 columns, legacy 4096);
#  2. bench_kernels -m -W 4096 and -W 8192: old (the previous kernels)
#     against new (the default) for each memory-bound kernel;
#  3. a profiled step of the 4096-wide test model (wide-4096.json: 3 layers,
#     32 heads of 128, 16 experts top-2; micro-batch 4, seq 2048), each
#     binary twice, interleaved;
#  4. both GPU test binaries whole and resume_gpu.sh;
#  5. the seed-base step beside torch_ref best_c (the kernels seed-base runs
#     are unchanged: their PTX is identical).
# Writes $OUT/run46.txt as it goes (the call may be cut off by the budget).
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run46.txt
B0=$R/b0
chmod +x $B0/tests/*/* 2>/dev/null
W=$R/wide-4096.json
{
echo "=== 1. test_kernels rmsnorm, qknorm_rope"
tk 120 test_kernels 'kernels/@(rmsnorm|qknorm_rope)' | grep -E "\[PASS|\[FAIL|Assert|Synthesis" | tail -20
echo "=== 2. bench_kernels -m -W 4096 (B 8, T 2048: 16384 rows)"
timeout 90 $B/tests/bench/bench_kernels -m -W 4096 2>&1 | tail -12
echo "=== 2. bench_kernels -m -W 8192 -B 4 (8192 rows)"
timeout 90 $B/tests/bench/bench_kernels -m -W 8192 -B 4 2>&1 | tail -12
for k in 1 2; do
	for b in $B $B0; do
		echo "=== 3. profile wide-4096 B=4 ($b)"
		timeout 100 $b/tests/bench/bench_cuda -m $W -B 4 -T 2048 -n 3 -w 2 -p 2>/dev/null |
			grep -E "step_ms|rmsnorm|qknorm|rope|total" | sed 's/"model".*"step_ms"/"step_ms"/'
	done
done
date -u
echo "=== 4. test_kernels (all, timeout 200)"
tk 200 test_kernels '*' | grep -E "\[FAIL|Assert|Synthesis" | tail -20
echo "=== 4. test_backend (all, timeout 90)"
tk 90 test_backend '*' | grep -E "cosine over|four steps|\[FAIL|Assert|Synthesis" | tail -20
echo "=== 4. resume_gpu.sh"
MOE_BIN=$B/cmd MOE_BUILDDIR=$B MOE_SRCDIR=$PWD timeout 200 sh tests/train/resume_gpu.sh; echo "rc=$?"
date -u
echo "=== 5. seed-base beside torch_ref"
bc
torch_seed
bc
date -u
} 2>&1 | tee $O
