#!/bin/sh
# The TMA grouped GEMMs (kernels/grouped_tma.cu) on the GPU machine: the
# grouped kernel tests, the expert-path backend tests, the kernel table
# (wgmma and tma in the same run), then the seed-base step with the default
# expert GEMMs and with MOE_CUDA_GROUPED=wgmma, each twice, interleaved.
#   PACK=.devruntma sh tests/bench/gpu/run_tma.sh
# PACK: the folder pack.sh wrote, carried to the device; STEPS=0 skips the
# step benchmarks, RUNS lists them (default, wgmma, tma, tma-fd, tmaN:
# tma in configuration N), PROFILE the profiled steps (grouped ops shown);
# the tests' full output goes to $OUT/tma-tests.log.
set -u
PACK=${PACK:-.devruntma}
. "$(dirname "$0")/common.sh"
L=${OUT:-/tmp}/tma-tests.log
echo "=== test_kernels --filter 'kernels/grouped*'"
LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 150 $B/tests/kernels/test_kernels --verbose --filter 'kernels/grouped*' >$L 2>&1
echo "exit $?"
grep -v "relative error" $L | tail -25
echo "largest relative errors of the tma checks:"
grep "tma .*relative error" $L | sed 's/.*: relative error \([^ ]*\) .*/\1 &/' | sort -g | tail -3 | cut -d' ' -f2-
for f in expert_gemm_paths_agree grads_by_overwrite; do
	echo "=== test_backend --filter 'backend/$f'"
	LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 120 $B/tests/kernels/test_backend --filter "backend/$f" 2>&1 | tail -12
done
echo "=== bench_kernels -B 16"
timeout 150 $B/tests/bench/bench_kernels -B 16 2>&1 | grep -v "^attention"
# run_step V ARGS: bench_cuda with the expert GEMMs of V (default: none set;
# tmaN: MOE_CUDA_GROUPED=tma with configuration N; else MOE_CUDA_GROUPED=V)
run_step()
{
	v=$1
	shift
	case $v in
	default) timeout 100 $B/tests/bench/bench_cuda -m $M -B 16 "$@" 2>&1 ;;
	tma[1-9]) MOE_CUDA_GROUPED=tma MOE_CUDA_GROUPED_TMA_CFG=${v#tma} timeout 100 $B/tests/bench/bench_cuda -m $M -B 16 "$@" 2>&1 ;;
	*) MOE_CUDA_GROUPED=$v timeout 100 $B/tests/bench/bench_cuda -m $M -B 16 "$@" 2>&1 ;;
	esac
}
if [ "${STEPS:-1}" != 0 ]; then
	for v in ${RUNS:-default wgmma default wgmma}; do
		echo "=== MOE_CUDA_GROUPED=$v bench_cuda -m $M -B 16 -n 6 -w 2"
		run_step "$v" -n 6 -w 2 | tail -1
	done
	for v in ${PROFILE:-}; do
		P=${OUT:-/tmp}/tma-profile-$v.log
		echo "=== MOE_CUDA_GROUPED=$v bench_cuda -m $M -B 16 -n 1 -w 2 -p (all in $P)"
		run_step "$v" -n 1 -w 2 -p >$P
		echo "exit $?"
		grep -E "grouped|total|wall|rror" $P
	done
fi
date -u
