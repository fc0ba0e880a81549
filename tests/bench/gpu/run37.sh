#!/bin/sh
# Session 7, call 37 (H100): the ping-pong 64 x 256 configuration of the
# expert GEMMs (grouped_tma.cu configurations 5 and 6): its tests (every
# configuration against the CPU reference, the weight-gradient sums of
# squares), the kernel table, the step with MOE_CUDA_GROUPED_TMA_CFG=5 / 6
# against the default, interleaved, and profiles; also the GEMM tuning's
# gap test and the new GPU reproducibility / resume test.  Writes
# $OUT/run37.txt.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run37.txt
{
echo "=== test_kernels grouped_tma*, gemm_tuned_same_bits"
LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 200 $B/tests/kernels/test_kernels --verbose \
	--filter 'kernels/@(grouped_tma|grouped_tma_wgrad_ssq|gemm_tuned_same_bits)' 2>&1 |
	grep -E "\[PASS|\[FAIL|Assert|Synthesis|gaps|config 5" | grep -v "relative error" | tail -30
echo "=== resume_gpu.sh"
MOE_BIN=$B/cmd MOE_BUILDDIR=$B MOE_SRCDIR=$PWD timeout 200 sh tests/train/resume_gpu.sh; echo "rc=$?"
echo "=== bench_kernels -t -B 16 (TMA expert GEMMs by configuration)"
timeout 120 $B/tests/bench/bench_kernels -t -B 16 2>&1 | grep -E "tma|cuBLAS|dense" | head -60
echo "=== steps"
bc
MOE_CUDA_GROUPED_TMA_CFG=6 bc; echo "(MOE_CUDA_GROUPED_TMA_CFG=6)"
MOE_CUDA_GROUPED_TMA_CFG=5 bc; echo "(MOE_CUDA_GROUPED_TMA_CFG=5)"
bc
MOE_CUDA_GROUPED_TMA_CFG=6 bc; echo "(MOE_CUDA_GROUPED_TMA_CFG=6)"
for c in 0 6; do
	echo "=== profile MOE_CUDA_GROUPED_TMA_CFG=$c"
	MOE_CUDA_GROUPED_TMA_CFG=$c timeout 100 $B/tests/bench/bench_cuda -m $M -B 16 -n 1 -w 2 -p 2>/dev/null |
		grep -E "grouped|swiglu|total|wall"
done
date -u
} 2>&1 | tee $O
