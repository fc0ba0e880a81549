#!/bin/sh
# Session 4 of the TMA grouped GEMMs (kernels/grouped_tma.cu) on the GPU
# machine: seed-base steps with the default and with
# MOE_CUDA_GROUPED_TMA_CFG=4 (session 3's default), interleaved; the
# expert-path backend tests; the grouped kernel tests (every configuration;
# if they hang, nothing after them runs); the kernel table (TMA kernels
# only, every configuration) with balanced and with skewed routing; more
# steps (RUNS2, none by default); one profiled step of each (grouped ops);
# a short table.  (Device call 2 ran it with RUNS2='7 default 7 default'
# and PROFILE='default 7 4' when configurations 5-7 existed.)
#   PACK=.devruntma sh tests/bench/gpu/run_tma4.sh
# RUNS, RUNS2: the step runs before and after the tests (default, or a
# MOE_CUDA_GROUPED_TMA_CFG value 1-4), PROFILE the profiled ones; SKEW: the
# -s of the skewed kernel table.  Full outputs under $OUT: tma-tests.log,
# tma-kernels.log, tma-steps.log, tma-profile-*.log.
set -u
PACK=${PACK:-.devruntma}
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
run_step()
{
	v=$1
	shift
	case $v in
	default) timeout 100 $B/tests/bench/bench_cuda -m $M -B 16 "$@" 2>&1 ;;
	*) MOE_CUDA_GROUPED_TMA_CFG=$v timeout 100 $B/tests/bench/bench_cuda -m $M -B 16 "$@" 2>&1 ;;
	esac
}
S=$O/tma-steps.log
steps()
{
	for v in "$@"; do
		echo "=== MOE_CUDA_GROUPED_TMA_CFG=$v bench_cuda -m $M -B 16 -n 6 -w 2"
		run_step "$v" -n 6 -w 2 | tail -1 | sed "s/^/cfg=$v /" | tee -a $S
	done
}
steps ${RUNS:-default 4 default 4}
for f in expert_gemm_paths_agree grads_by_overwrite; do
	echo "=== test_backend --filter 'backend/$f'"
	LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 120 $B/tests/kernels/test_backend --filter "backend/$f" 2>&1 | tail -6
done
L=$O/tma-tests.log
echo "=== test_kernels --filter 'kernels/grouped*'"
LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 90 $B/tests/kernels/test_kernels --verbose --filter 'kernels/grouped*' >$L 2>&1
rc=$?
echo "exit $rc"
grep -v "relative error" $L | tail -8
echo "tma checks: $(grep -c 'tma .*relative error' $L); largest relative errors:"
grep "tma .*relative error" $L | sed 's/.*: relative error \([^ ]*\) .*/\1 &/' | sort -g | tail -3 | cut -d' ' -f2-
echo "largest of the fp32 weight gradients:"
grep "tma wgrad.*relative error" $L | sed 's/.*: relative error \([^ ]*\) .*/\1 &/' | sort -g | tail -1 | cut -d' ' -f2-
[ $rc = 124 ] && { echo "test_kernels timed out (a kernel hangs): nothing else run"; exit 1; }
K=$O/tma-kernels.log
for s in 0 ${SKEW:-0.5}; do
	echo "=== bench_kernels -B 16 -t -s $s"
	timeout 120 $B/tests/bench/bench_kernels -B 16 -t -s $s 2>&1 | grep -v "^attention" | tee -a $K
done
steps ${RUNS2:-}
for v in ${PROFILE:-default 4}; do
	P=$O/tma-profile-$v.log
	echo "=== MOE_CUDA_GROUPED_TMA_CFG=$v bench_cuda -m $M -B 16 -n 1 -w 2 -p (all in $P)"
	run_step "$v" -n 1 -w 2 -p >$P
	echo "exit $?"
	grep -E "grouped|total|wall|rror" $P
done
echo "=== summary (ms; B=16 shapes; cfg 0 = default, 4 = session 3)"
grep -E "^(routing|tma (fwd|dgrad|wgrad store) .*cfg [04])" $K
echo "step ms (run order):"
sed -n 's/^\(cfg=[^ ]*\) .*"step_ms": \([0-9.]*\).*/\1 \2/p' $S
date -u
