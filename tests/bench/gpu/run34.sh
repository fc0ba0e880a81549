#!/bin/sh
# Session 7, call 34 (H100): the dense GEMMs through cuBLASLt with a timed
# choice among the heuristic's candidates that give the first candidate's
# bits (gemm.cu).  Tests first (the gemm tests, the tuned plans bit-
# identical to the first candidate, test_backend whole), then the step
# tuned against MOE_CUDA_GEMM_TUNE=0 (cublasGemmEx, as before), interleaved,
# beside torch_ref, the plans table and a profile.  Writes $OUT/run34.txt.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run34.txt
{
echo "=== test_kernels gemm*"
LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 150 $B/tests/kernels/test_kernels --verbose --filter 'kernels/gemm*' 2>&1 |
	grep -E "gemm|PASS|FAIL|Assert|Synthesis|tuned|differ" | grep -v "disabled"
gpu_test test_backend "four steps|cosine over|PASS|FAIL|Assert|Synthesis" 30
bc -G
MOE_CUDA_GEMM_TUNE=0 bc; echo "(MOE_CUDA_GEMM_TUNE=0)"
bc
torch_seed
bc
MOE_CUDA_GEMM_TUNE=0 bc; echo "(MOE_CUDA_GEMM_TUNE=0)"
bc -Z; echo "(-Z)"
echo "=== profile (tuned)"
timeout 100 $B/tests/bench/bench_cuda -m $M -B 16 -n 1 -w 2 -p 2>/dev/null | grep -E "^linear|total|wall"
echo "=== profile (MOE_CUDA_GEMM_TUNE=0)"
MOE_CUDA_GEMM_TUNE=0 timeout 100 $B/tests/bench/bench_cuda -m $M -B 16 -n 1 -w 2 -p 2>/dev/null | grep -E "^linear|total|wall"
date -u
} 2>&1 | tee $O
