#!/bin/sh
# Session 6, the routing kernels (router.cu, route_group.cu; routing engineer):
# their GPU tests (router, zloss_and_stats, route_group_cases and
# route_group_and_permute against the CPU reference, reproducibility, the
# legacy kernels too) and test_backend (one step against the CPU backend,
# training_steps_repeatable), with the new kernels and with the previous
# ones (MOE_CUDA_ROUTE=legacy); then seed-base steps interleaved with
# MOE_CUDA_ROUTE=legacy (the previous kernels), twice each; a profiled step
# each way; bench_kernels -r (each routing kernel alone, old and new); a
# short table last.  Writes $OUT/run_route6.txt.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run_route6.txt
T=/tmp/route6.tab
: >$T
kt() { # test_kernels tests: a sample of the checks, the failures' messages, the verdicts
	echo "=== test_kernels --filter $1"
	LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 90 $B/tests/kernels/test_kernels --verbose --filter "$1" >/tmp/tk.out 2>&1
	echo "rc $?, $(grep -c "relative error" /tmp/tk.out) relative-error checks, the largest of each kind:"
	grep -o "\] [a-z_ ]*[a-z_]*[^:]*: relative error [0-9.e+-]* (tolerance [0-9.e+-]*)" /tmp/tk.out |
		sed 's/^\] //; s/ N=[^:]*//' | awk -F': relative error ' '{split($2, a, " "); v = a[1] + 0;
			if (!($1 in m) || v > m[$1]) {m[$1] = v; l[$1] = $0}} END {for (k in l) print l[k]}' | sort
	grep -E "zloss N=(1|32768) E=64|ids equal" /tmp/tk.out | head -6
	grep -E -A3 "Assertion Failed" /tmp/tk.out | head -30
	grep -E "^\[(PASS|FAIL|CRASH)|Synthesis|Crash" /tmp/tk.out
}
step() { # step LABEL [ENV=VALUE]: bench_cuda, its step_ms into the table
	echo "--- bench_cuda ($1)"
	env ${2:-MOE_CUDA_ROUTE=} timeout 120 $B/tests/bench/bench_cuda -m $M -B 16 -n 6 -w 2 2>/tmp/bc.err | tee /tmp/bc.out
	tail -1 /tmp/bc.err
	printf '%-28s %s\n' "$1" "$(sed -n 's/.*"step_ms": \([0-9.]*\).*"tok_per_s": \([0-9]*\).*/\1 ms  \2 tok\/s/p' /tmp/bc.out)" >>$T
}
{
kt 'kernels/router'
kt 'kernels/zloss_and_stats'
kt 'kernels/route_group*'
kt 'kernels/permute_rows'
tb() { # test_backend (all), its failures' messages
	echo "=== test_backend $*"
	env "$@" LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 100 $B/tests/kernels/test_backend --verbose >/tmp/tb.out 2>&1
	grep -E "cosine over|four steps|PASS|FAIL|Synthesis" /tmp/tb.out | tail -20
	grep -E -A3 "Assertion Failed" /tmp/tb.out | head -40
}
tb MOE_CUDA_ROUTE=
tb MOE_CUDA_ROUTE=legacy
echo "=== bench_kernels -r -B 16 (each kernel alone, median of 20 launches)"
timeout 60 $B/tests/bench/bench_kernels -r -B 16 2>&1 | tail -12 | tee /tmp/bk.out
step "new, run 1"
step "legacy, run 1" MOE_CUDA_ROUTE=legacy
step "new, run 2"
step "legacy, run 2" MOE_CUDA_ROUTE=legacy
echo "=== profile, new routing kernels"
profile
echo "=== profile, MOE_CUDA_ROUTE=legacy"
MOE_CUDA_ROUTE=legacy profile
echo "=== seed-base B=16 step (bench_cuda -n 6 -w 2), same card, interleaved"
cat $T
grep -E "^(sum|gather)" /tmp/bk.out
date -u
} 2>&1 | tee $O
