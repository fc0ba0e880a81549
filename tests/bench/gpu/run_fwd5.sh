#!/bin/sh
# Session 5, the warp-specialised attention forward (variant fa3 of
# kernels/attention_fwd.cu, in kernels/attention_fa3.cu) on the GPU machine:
#   1. test_kernels' attention_fa3_fwd alone, under timeout 60 (a hang, as
#      a wrong setmaxnreg split or mbarrier phase would give, stops only it;
#      then nothing else runs: every fa3 launch would wait the same way);
#   2. test_kernels' attention (every forward variant, fa3 included, against
#      the CPU reference over 15 shapes);
#   3. the kernel tables at seed-base and olmoe-like shapes (every variant);
#   4. seed-base steps, default forward and MOE_CUDA_ATTENTION_FWD=fa3
#      interleaved twice;
# then a short table.  About 70 s when nothing hangs.
#   RUNDIR=.devrunfwd5 sh .devrunfwd5/run_fwd5.sh
set -u
. "$(dirname "$0")/common.sh"
L=${OUT:-/tmp}/fwd5-tests.log
K=${OUT:-/tmp}/fwd5-bench.log
S=${OUT:-/tmp}/fwd5-steps.txt
tk() {
	LD_LIBRARY_PATH=$R/lib:$R/libtest timeout "$1" $B/tests/kernels/test_kernels --verbose --filter "$2"
}
worst() {
	grep "relative error" "$1" |
		sed -n 's/.*\(attention fwd [a-z0-9]*\( (packed qkv)\| vs wg1\)\?\) .*relative error \([^ ]*\) .*/\1|\3/p' |
		awk -F'|' '{if (!($1 in m) || $2 + 0 > m[$1] + 0) m[$1] = $2} END {for (k in m) print "  " k ": " m[k]}' | sort
}
echo "=== test_kernels --filter 'kernels/attention_fa3_fwd' (alone, timeout 60)"
tk 60 'kernels/attention_fa3_fwd' >$L 2>&1
frc=$?
echo "exit $frc"
grep -v "relative error" $L | grep -v "Test is disabled" | tail -10
echo "checks: $(grep -c 'relative error' $L); worst relative error:"
worst $L
if [ $frc = 124 ] || [ $frc = 137 ]; then
	echo "fa3 forward timed out (hang?): nothing else run"
	date -u
	exit 1
fi
echo "=== test_kernels --filter 'kernels/attention' (every forward variant against the CPU reference)"
tk 60 'kernels/attention' >$L.all 2>&1
arc=$?
echo "exit $arc"
grep -v "relative error" $L.all | grep -v "Test is disabled" | tail -4
echo "checks: $(grep -c 'relative error' $L.all); worst forward relative error:"
worst $L.all
echo "=== bench_kernels -a -B 16 (seed-base)"
timeout 40 $B/tests/bench/bench_kernels -a -B 16 2>&1 | grep -E "attention|rror" | tee $K
echo "=== bench_kernels -a -B 8 -T 4096 -H 16 -d 128 (olmoe)"
timeout 40 $B/tests/bench/bench_kernels -a -B 8 -T 4096 -H 16 -d 128 2>&1 | grep -E "attention|rror" | tee -a $K
: >$S
for f in - fa3 - fa3; do
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
echo "tests: attention_fa3_fwd exit $frc, attention exit $arc"
echo "forward kernels, ms (TFLOP/s), seed-base then olmoe:"
grep "attention fwd" $K | sed 's/^attention fwd /  /'
echo "steps (FWD, step ms, peak, loss):"
sed 's/^/  /' $S
date -u
