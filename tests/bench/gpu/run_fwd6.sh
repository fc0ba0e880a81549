#!/bin/sh
# Session 6, the persistent ping-pong attention forward (variants fa3p,
# fa3pk128 and fa3pn of kernels/attention_fwd.cu, in
# kernels/attention_fa3p.cu) on the GPU machine:
#   1. test_kernels' attention_fa3p_fwd, attention_fa3pk128_fwd,
#      attention_fa3pn_fwd and (the baseline) attention_fa3_fwd, each alone
#      under timeout 60 (a hang, as a wrong setmaxnreg split, mbarrier
#      phase or turn barrier would give, stops only that test); the worst
#      relative errors and the bit-identity counts against fa3 / fa3k128;
#   2. the kernel tables at seed-base and olmoe-like shapes (every variant,
#      then fa3, fa3p, fa3pn, fa3k128, fa3pk128 interleaved twice), under
#      timeout 90 with line-buffered output, so that a hanging variant
#      still leaves the rows before it;
# then a short table.  About 2 minutes when nothing hangs.
#   RUNDIR=.devrunfwd6 sh .devrunfwd6/run_fwd6.sh
set -u
. "$(dirname "$0")/common.sh"
L=${OUT:-/tmp}/fwd6-tests
K=${OUT:-/tmp}/fwd6-bench.log
tk() {
	LD_LIBRARY_PATH=$R/lib:$R/libtest timeout "$1" $B/tests/kernels/test_kernels --verbose --filter "$2"
}
worst() {
	grep "relative error" "$1" |
		sed -n 's/.*\(attention fwd [a-z0-9]*\( (packed qkv)\| vs [a-z0-9]*\)\?\) .* \(out\|lse\): relative error \([^ ]*\) .*/\1 \3|\4/p' |
		awk -F'|' '{if (!($1 in m) || $2 + 0 > m[$1] + 0) m[$1] = $2} END {for (k in m) print "  " k ": " m[k]}' | sort
}
res=
hung=
for t in attention_fa3p_fwd attention_fa3pk128_fwd attention_fa3pn_fwd attention_fa3_fwd; do
	echo "=== test_kernels --filter 'kernels/$t' (alone, timeout 60)"
	s0=$(date +%s)
	tk 60 "kernels/$t" >$L.$t.log 2>&1
	rc=$?
	echo "exit $rc ($(($(date +%s) - s0)) s)"
	grep -v "relative error" $L.$t.log | grep -v "Test is disabled" | grep -v "bits differ" | tail -8
	echo "checks: $(grep -c 'relative error' $L.$t.log); worst relative error:"
	worst $L.$t.log
	grep "bits differ" $L.$t.log | sed 's/.*\(attention fwd\)/  \1/'
	res="$res $t=$rc"
	case $rc in 124 | 137) hung="$hung $t" ;; esac
done
SB=
command -v stdbuf >/dev/null 2>&1 && SB="stdbuf -oL"
: >$K
for shape in "-B 16" "-B 8 -T 4096 -H 16 -d 128"; do
	echo "=== bench_kernels -a $shape"
	timeout 90 $SB $B/tests/bench/bench_kernels -a $shape 2>&1 | grep -E "attention|rror" | tee -a $K
done
echo "=== summary"
echo "tests (exit status):$res${hung:+; timed out:$hung}"
echo "forward kernels, ms (TFLOP/s), seed-base then olmoe:"
grep -E "^attention (B=|fwd)" $K | sed 's/^attention fwd /  /'
date -u
