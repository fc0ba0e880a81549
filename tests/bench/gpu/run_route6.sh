#!/bin/sh
# Session 6, the routing kernels (router.cu, route_group.cu; routing engineer):
# their GPU tests (router, zloss_and_stats, route_group_cases and
# route_group_and_permute against the CPU reference, reproducibility, the
# legacy kernels too) and test_backend (one step against the CPU backend,
# training_steps_repeatable); then seed-base steps interleaved with
# MOE_CUDA_ROUTE=legacy (the previous kernels), twice each; a profiled step
# each way; bench_kernels -r (each routing kernel alone, old and new); a
# short table last.  Writes $OUT/run_route6.txt.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run_route6.txt
T=/tmp/route6.tab
: >$T
kt() {
	echo "=== test_kernels --filter $1"
	LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 90 $B/tests/kernels/test_kernels --verbose --filter "$1" 2>&1 |
		grep -E "PASS|FAIL|Synthesis|differ|reproduc|error|Assert|Crash|rows, " | tail -30
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
echo "=== test_backend"
LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 100 $B/tests/kernels/test_backend --verbose 2>&1 |
	grep -E "cosine over|four steps|PASS|FAIL|Synthesis" | tail -16
echo "=== bench_kernels -r -B 16 (each kernel alone, median of 20 launches)"
timeout 60 $B/tests/bench/bench_kernels -r -B 16 2>&1 | tail -12
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
date -u
} 2>&1 | tee $O
