#!/bin/sh
# Session 6 of the TMA grouped GEMMs on the GPU machine: the clip norms'
# sums of squares from the expert weight-gradient epilogues
# (MOE_CUDA_SUMSQ_EPI, kernels/grouped_tma.cu, o_sumsq in backend_cuda.cu).
# The kernel tests (grouped_tma_wgrad_ssq, grouped_tma, adamw_sumsq; a hang
# stops the script), all of test_backend (sumsq_from_wgrad_epilogue,
# training_steps_repeatable, ...), seed-base steps with the switch on and
# off interleaved (twice each), a profiled step each way, a table last.
# STEPS2 (optional): more "LABEL ENV=VALUE" steps after those (call 2).
#   RUNDIR=.devruntma6 sh .devruntma6/run_tma6.sh
# Full outputs under $OUT: tma6-tests.log, tma6-backend.log.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
L=$O/tma6-tests.log
T=/tmp/tma6.tab
: >$T
: >$L
for t in ${KTESTS:-grouped_tma_wgrad_ssq adamw_sumsq grouped_tma}; do
	echo "=== test_kernels --filter 'kernels/$t' (timeout 90)"
	LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 90 $B/tests/kernels/test_kernels --verbose --filter "kernels/$t" >/tmp/tk.log 2>&1
	rc=$?
	cat /tmp/tk.log >>$L
	grep -v "relative error" /tmp/tk.log | grep -v "Test is disabled" | tail -8
	echo "test $t: exit $rc, $(grep -c 'relative error' /tmp/tk.log) relative-error checks" | tee -a $T
	[ $rc = 124 ] || [ $rc = 137 ] && { echo "test $t timed out (a kernel hangs): nothing else run"; cat $T; exit 1; }
done
BL=$O/tma6-backend.log
echo "=== test_backend (all, timeout 150)"
LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 150 $B/tests/kernels/test_backend --verbose >$BL 2>&1
rc=$?
grep -E "norms|clip norm|four steps|Synthesis|FAIL|Assert|rror|Crash" $BL | tail -24
echo "test_backend: exit $rc" | tee -a $T
step() { # step LABEL [ENV=VALUE ...]: bench_cuda, its step_ms into the table
	l=$1
	shift
	echo "--- bench_cuda ($l) $*"
	env "$@" timeout 90 $B/tests/bench/bench_cuda -m $M -B 16 -n 6 -w 2 2>/tmp/bc.err | tee /tmp/bc.out
	tail -1 /tmp/bc.err
	printf '%-34s %s\n' "$l" "$(sed -n 's/.*"step_ms": \([0-9.]*\).*"tok_per_s": \([0-9]*\).*/\1 ms  \2 tok\/s/p' /tmp/bc.out)" >>$T
}
step "epi on (default)" MOE_CUDA_SUMSQ_EPI=1
step "epi off" MOE_CUDA_SUMSQ_EPI=0
step "epi on (default)" MOE_CUDA_SUMSQ_EPI=1
step "epi off" MOE_CUDA_SUMSQ_EPI=0
if [ -n "${STEPS2:-}" ]; then
	echo "$STEPS2" | while read -r lab ev; do [ -n "$lab" ] && step "$lab" $ev; done
fi
for v in 1 0; do
	echo "=== profile MOE_CUDA_SUMSQ_EPI=$v B=16"
	MOE_CUDA_SUMSQ_EPI=$v timeout 90 $B/tests/bench/bench_cuda -m $M -B 16 -n 1 -w 2 -p 2>&1 | tail -n +2 |
		grep -E "grouped|swiglu|sumsq|adamw|total|step_ms|rror" | tee /tmp/prof$v.txt
	printf '%-34s %s\n' "profile epi=$v sumsq" "$(awk '$1=="sumsq"{print $2" ms, "$3" calls"}' /tmp/prof$v.txt)" >>$T
	printf '%-34s %s\n' "profile epi=$v grouped_bwd" "$(awk '$1=="grouped_bwd"{print $2" ms"}' /tmp/prof$v.txt)" >>$T
done
echo "=== summary"
cat $T
date -u
