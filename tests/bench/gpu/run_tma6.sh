#!/bin/sh
# Session 6 of the TMA grouped GEMMs on the GPU machine: the clip norms'
# sums of squares from the expert weight-gradient epilogues
# (MOE_CUDA_SUMSQ_EPI, kernels/grouped_tma.cu, o_sumsq in backend_cuda.cu).
# The kernel tests (grouped_tma_wgrad_ssq, grouped_tma, adamw_sumsq; a hang
# stops the script), all of test_backend (sumsq_from_wgrad_epilogue,
# training_steps_repeatable, ...), seed-base steps with the switch on and
# off interleaved (twice each), a profiled step each way, a table last.
# STEPS, PROFILES, KTESTS (optional): other steps, profiles, kernel tests (call 2).
#   RUNDIR=.devruntma6 sh .devruntma6/run_tma6.sh          (call 1)
#   CALL=2 RUNDIR=.devruntma6 sh .devruntma6/run_tma6.sh   (call 2: MOE_CUDA_TMA_FUSE steps)
# Full outputs under $OUT: tma6-tests.log, tma6-backend.log.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
if [ "${CALL:-1}" = 2 ]; then # call 2: the fused SwiGLU backward with g, u through the ring (Task 2)
	KTESTS=${KTESTS:-"grouped_tma_swiglu grouped_tma_wgrad_ssq grouped_tma adamw_sumsq"}
	STEPS=${STEPS:-"f0 MOE_CUDA_TMA_FUSE=0
f2 MOE_CUDA_TMA_FUSE=2
f3 MOE_CUDA_TMA_FUSE=3
f0 MOE_CUDA_TMA_FUSE=0
f2 MOE_CUDA_TMA_FUSE=2
f3 MOE_CUDA_TMA_FUSE=3
f2_dg2 MOE_CUDA_TMA_FUSE=2 MOE_CUDA_TMA_FUSE_DG=2
f0_epi_off MOE_CUDA_TMA_FUSE=0 MOE_CUDA_SUMSQ_EPI=0"}
	PROFILES=${PROFILES:-"MOE_CUDA_TMA_FUSE=0
MOE_CUDA_TMA_FUSE=3"}
fi
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
	if [ $rc = 124 ] || [ $rc = 137 ]; then
		[ $t = grouped_tma_swiglu ] || { echo "test $t timed out (a kernel hangs): nothing else run"; cat $T; exit 1; }
		echo "test $t timed out: no fused steps, test_backend's sumsq and repeatability tests only" | tee -a $T
		NOFUSE=1
	fi
done
BL=$O/tma6-backend.log
: >$BL
TB=all
[ -n "${NOFUSE:-}" ] && TB="sumsq_from_wgrad_epilogue training_steps_repeatable"
for f in $TB; do
	fl=$f
	[ $f = all ] && fl='*'
	echo "=== test_backend --filter 'backend/$fl' (timeout 150)"
	LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 150 $B/tests/kernels/test_backend --verbose --filter "backend/$fl" >/tmp/tb.log 2>&1
	rc=$?
	cat /tmp/tb.log >>$BL
	grep -E "norms|clip norm|four steps|fused vs|Synthesis|FAIL|Assert|rror|Crash" /tmp/tb.log | tail -24
	echo "test_backend $f: exit $rc" | tee -a $T
done
[ -n "${NOFUSE:-}" ] && STEPS=$(echo "$STEPS" | grep -v "TMA_FUSE=[123]") && PROFILES=$(echo "$PROFILES" | grep -v "TMA_FUSE=[123]")
step() { # step LABEL [ENV=VALUE ...]: bench_cuda, its step_ms into the table
	l=$1
	shift
	echo "--- bench_cuda ($l) $*"
	env "$@" timeout 90 $B/tests/bench/bench_cuda -m $M -B 16 -n 6 -w 2 2>/tmp/bc.err </dev/null | tee /tmp/bc.out
	tail -1 /tmp/bc.err
	printf '%-44s %s\n' "$l $*" "$(sed -n 's/.*"step_ms": \([0-9.]*\).*"tok_per_s": \([0-9]*\).*/\1 ms  \2 tok\/s/p' /tmp/bc.out)" >>$T
}
# STEPS: one "LABEL ENV=VALUE [ENV=VALUE]" a line (call 1: the default below);
# PROFILES: the ENV=VALUE settings of the profiled steps, one a line
STEPS=${STEPS:-"epi_on MOE_CUDA_SUMSQ_EPI=1
epi_off MOE_CUDA_SUMSQ_EPI=0
epi_on MOE_CUDA_SUMSQ_EPI=1
epi_off MOE_CUDA_SUMSQ_EPI=0"}
PROFILES=${PROFILES:-"MOE_CUDA_SUMSQ_EPI=1
MOE_CUDA_SUMSQ_EPI=0"}
echo "$STEPS" >/tmp/tma6.steps
while read -r lab ev; do [ -n "$lab" ] && step "$lab" $ev; done </tmp/tma6.steps
echo "$PROFILES" >/tmp/tma6.profiles
while read -r ev; do
	[ -n "$ev" ] || continue
	echo "=== profile $ev B=16"
	env $ev timeout 90 $B/tests/bench/bench_cuda -m $M -B 16 -n 1 -w 2 -p 2>&1 </dev/null | tail -n +2 |
		grep -E "grouped|swiglu|sumsq|adamw|total|step_ms|rror" | tee /tmp/prof.txt
	for op in sumsq grouped_bwd grouped_dgrad_swiglu swiglu_bwd grouped_fwd grouped_fwd_swiglu swiglu "total"; do
		v=$(awk -v o="$op" '$1==o && o!="total"{print $2" ms"} o=="total" && $1=="total"{print $3" ms"}' /tmp/prof.txt)
		[ -n "$v" ] && printf '%-44s %s\n' "profile $ev $op" "$v" >>$T
	done
done </tmp/tma6.profiles
echo "=== summary"
cat $T
date -u
