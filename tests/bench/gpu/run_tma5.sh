#!/bin/sh
# Session 5 of the TMA grouped GEMMs on the GPU machine: SwiGLU fused into
# the routed experts' gate_up forward and down input-gradient epilogues
# (MOE_CUDA_TMA_FUSE, kernels/grouped_tma.cu).  The grouped TMA kernel tests
# (if they hang, no fused step runs), the backend's expert-path and step
# tests, seed-base steps fused (3) and unfused (0) interleaved, then the
# forward alone (1), the input gradient alone (2), the input gradient's g, u loads without their L2
# prefetch (MOE_CUDA_TMA_FUSE_DG=3), the fused kernels in the ping-pong
# configuration (MOE_CUDA_TMA_FUSE_CFG=2), one profiled step of the default
# and one unfused, a table.  (Device call 1 of session 5 ran it with the
# input gradient's g, u read from global memory, DG=0 now, and steps
# 3 0 3 0 3,CFG=2.)
#   RUNDIR=.devruntma5 sh .devruntma5/run_tma5.sh
# Full outputs under $OUT: tma5-tests.log, tma5-backend.log.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
L=$O/tma5-tests.log
echo "=== test_kernels --filter 'kernels/grouped_tma*' ($L)"
LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 90 $B/tests/kernels/test_kernels --verbose --filter 'kernels/grouped_tma*' >$L 2>&1
rc=$?
echo "exit $rc"
grep -v "relative error" $L | grep -v "bitwise: yes" | tail -12
echo "checks: $(grep -c 'relative error' $L); dgu bitwise yes: $(grep -c 'bitwise: yes' $L), no: $(grep -c 'bitwise: no' $L)"
echo "largest relative errors of the swiglu checks:"
grep "tma swiglu.*relative error" $L | sed 's/.*: relative error \([^ ]*\) .*/\1 &/' | sort -g | tail -3 | cut -d' ' -f2-
[ $rc = 124 ] && { echo "test_kernels timed out (a kernel hangs): nothing else run"; exit 1; }
BL=$O/tma5-backend.log
for f in tma_swiglu_fusion_same_step expert_gemm_paths_agree grads_by_overwrite train_step_matches_cpu; do
	echo "=== test_backend --filter 'backend/$f'"
	LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 60 $B/tests/kernels/test_backend --verbose --filter "backend/$f" >/tmp/tb.log 2>&1
	echo "exit $?"
	grep -E "fused|vs|overwrite|Synthesis|FAIL|rror" /tmp/tb.log | tail -4
	cat /tmp/tb.log >>$BL
done
S=$O/tma5-steps.log
step() {
	echo "=== MOE_CUDA_TMA_FUSE=$1 ${2:-} bench_cuda -m $M -B 16 -n 6 -w 2"
	env MOE_CUDA_TMA_FUSE=$1 ${2:-} timeout 60 $B/tests/bench/bench_cuda -m $M -B 16 -n 6 -w 2 2>&1 | tail -1 |
		sed "s/^/fuse=$1${2:+,$2} /" | tee -a $S
}
step 0
step 3
step 0
step 3
step 1
step 2
step 3 MOE_CUDA_TMA_FUSE_DG=3
step 3 MOE_CUDA_TMA_FUSE_CFG=2
echo "=== profile (default) B=16: grouped, swiglu, total"
timeout 60 $B/tests/bench/bench_cuda -m $M -B 16 -n 1 -w 2 -p 2>&1 | tail -n +2 | grep -E "grouped|swiglu|sumsq|total|step_ms|rror"
echo "=== profile MOE_CUDA_TMA_FUSE=0 B=16: grouped, swiglu, total"
MOE_CUDA_TMA_FUSE=0 timeout 60 $B/tests/bench/bench_cuda -m $M -B 16 -n 1 -w 2 -p 2>&1 | tail -n +2 | grep -E "grouped|swiglu|sumsq|total|step_ms|rror"
echo "=== summary: step ms (run order)"
sed -n 's/^\([^ ]*\) .*"step_ms": \([0-9.]*\).*/\1 \2/p' $S
date -u
