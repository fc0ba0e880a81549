#!/bin/sh
# Session 5, attention (kernels/attention_fa3.cu: the warp-specialised
# backward) on the GPU machine: the attention tests (every variant against
# the CPU reference, large grids against v1, fa3 against wgeg bit for bit on
# packed qkv, bit reproducibility), the kernel tables at seed-base and
# olmoe-like shapes (every variant, one process each), then seed-base steps
# for each MOE_CUDA_ATTENTION_BWD in RUNS (default: wgeg, the session-4
# default, and the fastest backward of the seed-base table, twice,
# interleaved; "-" leaves the variable unset), then a short table.
#   RUNDIR=.devrunatt5 sh .devrunatt5/run_att5.sh
set -u
. "$(dirname "$0")/common.sh"
L=${OUT:-/tmp}/att-tests.log
K=${OUT:-/tmp}/att-bench.log
echo "=== test_kernels --filter 'kernels/attention_fa3' (fa3 against wgeg, alone first: a hang stops only it)"
LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 45 $B/tests/kernels/test_kernels --verbose --filter 'kernels/attention_fa3' 2>&1 | tail -4
echo "exit $?"
echo "=== test_kernels --filter 'kernels/attention*'"
LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 120 $B/tests/kernels/test_kernels --verbose --filter 'kernels/attention*' >$L 2>&1
trc=$?
echo "exit $trc"
grep -v "relative error" $L | grep -v "Test is disabled" | tail -14
echo "checks: $(grep -c 'relative error' $L); worst relative error per variant:"
grep "relative error" $L | sed -n 's/.*attention \(fwd\|bwd\) \([a-z0-9]*\)\( vs v1\)\? .*relative error \([^ ]*\) .*/\1 \2\3 \4/p' |
	awk '{k = $1 " " $2 ($3 == "vs" ? " vs v1" : ""); v = $NF; if (!(k in m) || v + 0 > m[k] + 0) m[k] = v} END {for (k in m) print "  " k, m[k]}' | sort
echo "=== bench_kernels -a -B 16 (seed-base)"
timeout 60 $B/tests/bench/bench_kernels -a -B 16 2>&1 | grep -E "attention|rror" | tee $K
echo "=== bench_kernels -a -B 8 -T 4096 -H 16 -d 128 (olmoe)"
timeout 60 $B/tests/bench/bench_kernels -a -B 8 -T 4096 -H 16 -d 128 2>&1 | grep -E "attention|rror"
bb=$(awk '/attention bwd/ && !/default/ && $3 != "v1" {print $4, $3}' $K | sort -g | head -1 | cut -d' ' -f2)
echo "fastest backward at seed-base: ${bb:-?}"
if [ $trc != 124 ] && [ $trc != 137 ]; then
	S=${OUT:-/tmp}/att-steps.txt
	: >$S
	for b in ${RUNS:-wgeg ${bb:-wgeg} wgeg ${bb:-wgeg}}; do
		echo "=== step MOE_CUDA_ATTENTION_BWD=$b bench_cuda -m $M -B 16 -n 6 -w 2"
		(
			[ "$b" = - ] || export MOE_CUDA_ATTENTION_BWD=$b
			bc
		) | tee /tmp/step.txt
		echo "$b $(sed -n 's/.*"step_ms": \([0-9.]*\).*"peak_gib": \([0-9.]*\).*/\1 ms, peak \2 GiB/p' /tmp/step.txt)" >>$S
	done
	echo "=== steps (BWD, step ms, peak)"
	cat $S
fi
date -u
