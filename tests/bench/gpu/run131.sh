#!/bin/sh
# Session 18 (H200), call 131: fa3f at Dh 96 with warpgroup 1's dQ product
# at N = 32 (its columns 64-95; before: N = 64 with 96-127 zero): the
# attention tests (CPU reference, the twins' bits), test_backend whole, the
# backward kernel alone (bench_kernels -a, seed-base's shape) and seed-base
# steps with MOE_CUDA_FA3F_N32=0 / 1 interleaved.  Everything in
# $OUT/run131.txt; a summary printed last.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
ak() {
	echo "--- bench_kernels -a N32=$1"
	MOE_CUDA_FA3F_N32=$1 timeout 100 $B/tests/bench/bench_kernels -a -B 16 -T 2048 -H 8 -d 96 2>&1 | grep -E "bwd"
}
{
echo "=== test_kernels attention*"
tk 200 test_kernels 'kernels/attention*' | grep -E "\[FAIL|Assert|Synthesis" | tail -20
echo "=== test_backend (all)"
tk 90 test_backend '*' | grep -E "cosine over|\[FAIL|Assert|Synthesis" | tail -12
echo "=== kernels"
ak 0; ak 1; ak 0; ak 1
echo "=== steps"
bc_as n32 MOE_CUDA_FA3F_N32=1
bc_as n64 MOE_CUDA_FA3F_N32=0
bc_as n32 MOE_CUDA_FA3F_N32=1
bc_as n64 MOE_CUDA_FA3F_N32=0
bc_as n32 MOE_CUDA_FA3F_N32=1
} >$O/run131.txt 2>&1
grep -E "^=== |^--- |\[FAIL|Assert|Synthesis|fa3f |default|step_ms" $O/run131.txt |
	sed 's/"model".*"step_ms"/"step_ms"/; s/"tflops".*"loss"/"loss"/' | tail -45
date -u
