#!/bin/sh
# Session 7, after the review refactors (7acd5f6: the attention backward's
# shared P^T / dV / dS^T step, gemm.cu's plans): both GPU test binaries
# whole, resume_gpu.sh, the attention kernels timed with the new binaries
# (b) and those before the refactor (b0: 3ec99c3) interleaved, bench_gemm -a
# -r through moe_cuda_gemm_survey, and the default step of each.  Writes
# $OUT/run45.txt.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run45.txt
B0=$R/b0
chmod +x $B0/tests/*/* 2>/dev/null
{
echo "=== test_kernels (all, timeout 200)"
tk 200 test_kernels '*' | grep -E "\[FAIL|Assert|Synthesis" | tail -20
echo "=== test_backend (all, timeout 90)"
tk 90 test_backend '*' | grep -E "cosine over|four steps|\[FAIL|Assert|Synthesis" | tail -20
echo "=== resume_gpu.sh"
MOE_BIN=$B/cmd MOE_BUILDDIR=$B MOE_SRCDIR=$PWD timeout 200 sh tests/train/resume_gpu.sh; echo "rc=$?"
for k in 1 2; do
	for b in $B $B0; do
		echo "=== bench_kernels -a ($b)"
		timeout 90 $b/tests/bench/bench_kernels -a -B 16 2>&1 | grep -E "bwd (wgeg|fu4g|fa3|fa3f) "
	done
done
echo "=== bench_gemm -a -r"
timeout 200 $B/tests/bench/bench_gemm -a -r 2>&1 | tail -25
for b in $B $B0 $B; do
	echo "--- seed-base ($b)"
	timeout 120 $b/tests/bench/bench_cuda -m $M -B 16 -n 6 -w 2 2>/dev/null | tail -1
done
date -u
} 2>&1 | tee $O
