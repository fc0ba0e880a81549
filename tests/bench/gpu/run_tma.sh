#!/bin/sh
# The TMA grouped GEMMs (kernels/grouped_tma.cu) on the GPU machine: the
# grouped kernel tests, the expert-path backend test, the kernel table
# (wgmma and tma in the same run), then the seed-base step with the default
# expert GEMMs and with MOE_CUDA_GROUPED=tma, each twice, interleaved.
#   PACK=.devruntma sh tests/bench/gpu/run_tma.sh
# PACK: the folder pack.sh wrote, carried to the device; STEPS=0 skips the
# step benchmarks; the tests' full output goes to $OUT/tma-tests.log.
set -u
R=$PWD/${PACK:-.devruntma}
L=${OUT:-/tmp}/tma-tests.log
export MOE_DATADIR=$PWD/share NCCL_NVLS_ENABLE=0
B=$R/b
chmod +x $B/cmd/* $B/tests/*/* 2>/dev/null
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
echo "=== test_kernels --filter 'kernels/grouped*'"
LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 150 $B/tests/kernels/test_kernels --verbose --filter 'kernels/grouped*' >$L 2>&1
echo "exit $?"
grep -v "relative error" $L | tail -25
echo "largest relative errors of the tma checks:"
grep "tma .*relative error" $L | sed 's/.*: relative error \([^ ]*\) .*/\1 &/' | sort -g | tail -3 | cut -d' ' -f2-
echo "=== test_backend --filter 'backend/expert_gemm_paths_agree'"
LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 120 $B/tests/kernels/test_backend --filter 'backend/expert_gemm_paths_agree' 2>&1 | tail -12
export LD_LIBRARY_PATH=$R/lib
echo "=== bench_kernels -B 16"
timeout 150 $B/tests/bench/bench_kernels -B 16 2>&1 | grep -v "^attention"
if [ "${STEPS:-1}" != 0 ]; then
	M=share/models/seed-base.json
	for v in default tma default tma; do
		echo "=== MOE_CUDA_GROUPED=$v bench_cuda -m $M -B 16 -n 6 -w 2"
		if [ $v = default ]; then
			timeout 60 $B/tests/bench/bench_cuda -m $M -B 16 -n 6 -w 2 2>&1 | tail -1
		else
			MOE_CUDA_GROUPED=$v timeout 60 $B/tests/bench/bench_cuda -m $M -B 16 -n 6 -w 2 2>&1 | tail -1
		fi
	done
fi
date -u
