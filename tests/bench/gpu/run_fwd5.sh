#!/bin/sh
# Session 5, the warp-specialised attention forward (variants fa3, fa3k128
# and fa3h of kernels/attention_fwd.cu, in kernels/attention_fa3.cu) on the
# GPU machine:
#   1. test_kernels' attention_fa3_fwd, attention_fa3k128_fwd and
#      attention_fa3h_fwd, each alone under timeout 45 (a hang, as a wrong
#      setmaxnreg split or mbarrier phase would give, stops only that test);
#      if fa3 hangs nothing else runs, if another does, only the table's
#      rows before it and the steps with fa3;
#   2. test_kernels' attention (every forward variant against the CPU
#      reference over 15 shapes);
#   3. the kernel tables at seed-base and olmoe-like shapes (every variant);
#   4. seed-base steps, the default forward and MOE_CUDA_ATTENTION_FWD=fa3
#      interleaved twice (and the fastest fa3 variant of the seed-base table
#      beside them when that is another);
# then a short table.  About 100 s when nothing hangs.
#   RUNDIR=.devrunfwd5 sh .devrunfwd5/run_fwd5.sh
set -u
. "$(dirname "$0")/common.sh"
L=${OUT:-/tmp}/fwd5-tests
K=${OUT:-/tmp}/fwd5-bench.log
S=${OUT:-/tmp}/fwd5-steps.txt
tk() {
	LD_LIBRARY_PATH=$R/lib:$R/libtest timeout "$1" $B/tests/kernels/test_kernels --verbose --filter "$2"
}
worst() {
	grep "relative error" "$1" |
		sed -n 's/.*\(attention fwd [a-z0-9]*\( (packed qkv)\| vs wg1\)\?\) .* \(out\|lse\): relative error \([^ ]*\) .*/\1 \3|\4/p' |
		awk -F'|' '{if (!($1 in m) || $2 + 0 > m[$1] + 0) m[$1] = $2} END {for (k in m) print "  " k ": " m[k]}' | sort
}
hung=
res=
for t in attention_fa3_fwd attention_fa3k128_fwd attention_fa3h_fwd; do
	echo "=== test_kernels --filter 'kernels/$t' (alone, timeout 45)"
	tk 45 "kernels/$t" >$L.$t.log 2>&1
	rc=$?
	echo "exit $rc"
	grep -v "relative error" $L.$t.log | grep -v "Test is disabled" | tail -8
	echo "checks: $(grep -c 'relative error' $L.$t.log); worst relative error:"
	worst $L.$t.log
	res="$res $t=$rc"
	if [ $rc = 124 ] || [ $rc = 137 ]; then
		hung="$hung $t"
		[ $t = attention_fa3_fwd ] && break
	fi
done
case "$hung" in
*attention_fa3_fwd*)
	echo "fa3 forward timed out (hang?): nothing else run"
	date -u
	exit 1
	;;
esac
arc=skipped
if [ -z "$hung" ]; then
	echo "=== test_kernels --filter 'kernels/attention' (every forward variant against the CPU reference)"
	tk 60 'kernels/attention' >$L.all.log 2>&1
	arc=$?
	echo "exit $arc"
	grep -v "relative error" $L.all.log | grep -v "Test is disabled" | tail -4
	echo "checks: $(grep -c 'relative error' $L.all.log); worst forward relative error:"
	worst $L.all.log
	echo "=== bench_kernels -a -B 16 (seed-base)"
	timeout 40 $B/tests/bench/bench_kernels -a -B 16 2>&1 | grep -E "attention|rror" | tee $K
	echo "=== bench_kernels -a -B 8 -T 4096 -H 16 -d 128 (olmoe)"
	timeout 40 $B/tests/bench/bench_kernels -a -B 8 -T 4096 -H 16 -d 128 2>&1 | grep -E "attention|rror" | tee -a $K
else
	# another variant hung: the table's rows before it (fa3 among them)
	echo "=== bench_kernels -a -B 16 (seed-base; rows up to the variant that hangs, timeout 15)"
	timeout 15 stdbuf -oL $B/tests/bench/bench_kernels -a -B 16 2>&1 | grep -E "attention|rror" | tee $K
fi
F=$(awk '/^attention B=/ {n++} n == 1 && /attention fwd fa3/ && !/default/ {print $4, $3}' $K | sort -g | head -1 |
	cut -d' ' -f2)
echo "fastest fa3 forward at seed-base: ${F:-?}"
RUNS="- fa3 - fa3"
[ -n "$F" ] && [ "$F" != fa3 ] && RUNS="- fa3 $F - fa3 $F"
: >$S
for f in $RUNS; do
	echo "=== step MOE_CUDA_ATTENTION_FWD=$f bench_cuda -m $M -B 16 -n 6 -w 2"
	(
		[ "$f" = - ] || export MOE_CUDA_ATTENTION_FWD=$f
		bc
	) | tee /tmp/step.txt
	n=$f
	[ "$f" = - ] && n=default
	echo "$n $(sed -n 's/.*"step_ms": \([0-9.]*\).*"peak_gib": \([0-9.]*\).*"loss": \([0-9.]*\).*/\1 ms, peak \2 GiB, loss \3/p' /tmp/step.txt)" >>$S
done
echo "=== summary"
echo "tests (exit status):$res attention=$arc${hung:+; timed out:$hung}"
echo "forward kernels, ms (TFLOP/s), seed-base then olmoe:"
grep "attention fwd" $K | sed 's/^attention fwd /  /'
echo "steps (FWD, step ms, peak, loss):"
sed 's/^/  /' $S
date -u
