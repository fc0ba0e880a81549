#!/bin/sh
# Session 7, call 33 (H100): the deterministic embedding backward in
# fixed chunks (4ecf88b): its GPU test (bit-identical to the host
# emulation), test_backend whole, the step on text-like ids (-Z) with the
# deterministic default against the atomics, interleaved, and its profile
# row; then bench_gemm with random operands, cublasGemmEx's choices against
# every cuBLASLt heuristic algorithm (is autotuning the dense GEMMs worth
# it?).  Writes $OUT/run33.txt.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run33.txt
{
echo "=== test_kernels embedding*"
LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 60 $B/tests/kernels/test_kernels --verbose --filter 'kernels/embedding*' 2>&1 |
	grep -E "embedding|PASS|FAIL|Assert|Synthesis" | grep -v "disabled"
gpu_test test_backend "four steps|cosine over|PASS|FAIL|Assert|Synthesis" 30
for d in 1 0 1 0; do
	MOE_CUDA_DETERMINISTIC=$d bc -Z; echo "(-Z, MOE_CUDA_DETERMINISTIC=$d)"
done
for d in 1 0; do
	echo "=== profile -Z, MOE_CUDA_DETERMINISTIC=$d"
	MOE_CUDA_DETERMINISTIC=$d timeout 100 $B/tests/bench/bench_cuda -m $M -B 16 -n 1 -w 2 -p -Z 2>/dev/null |
		grep -E "embedding|rmsnorm_bwd|qknorm_rope_bwd|total"
done
bc
echo "=== bench_gemm -r -a (random operands)"
timeout 200 $B/tests/bench/bench_gemm -r -a 2>&1
bc
date -u
} 2>&1 | tee $O
