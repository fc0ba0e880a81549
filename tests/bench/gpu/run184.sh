#!/bin/sh
# Session 24 (H200), call 184: the consumer warpgroup's index made warp-
# uniform to the compiler (__shfl_sync), so the wgmma descriptors and
# stage addresses go to uniform registers (code 47 KiB instead of 58, and
# three held blocks no longer spill): the build holds three (GT_HOLD 3),
# oldb/bench_kernels_u2 two with the same change, oldb/* eb25e91's build
# (two, per-thread).  Grouped tests, the same checkpoint bytes as eb25e91,
# bench_kernels -t interleaved, Nsight Compute's instruction count of the
# forward, steps interleaved.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
N=/usr/local/cuda/bin/ncu
[ -x $N ] || N=ncu
{
echo "=== test_kernels *grouped*"
tk 200 test_kernels '*grouped*' | grep -E "\[FAIL|Assert|Synthesis"
old_build
same_bytes $R/seed-3l.json
for r in 1 2; do
	for v in u3 u2 e; do
		bk=$B/tests/bench/bench_kernels
		[ $v = e ] && bk=/tmp/oldb/bench_kernels
		[ $v = u2 ] && bk=/tmp/oldb/bench_kernels_u2
		echo "--- $v bench_kernels -t -B 16"
		timeout 120 $bk -t -B 16 2>&1 | grep -E "tma (fwd|dgrad|wgrad store).*cfg 0|[1-9][0-9]* of [0-9]* elements differ"
	done
done
for v in u3 e; do
	bk=$B/tests/bench/bench_kernels
	[ $v = e ] && bk=/tmp/oldb/bench_kernels
	echo "--- ncu $v fwd 768x1280"
	timeout 100 $N --clock-control none --kernel-name-base mangled -k "regex:gt_kernelILi0ELi128ELi256" --launch-skip 5 \
		--launch-count 1 --metrics gpu__time_duration.sum,smsp__inst_executed.sum,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active \
		$bk -t -B 16 -g 0 2>&1 | grep -E "^ +(gpu__|sm__|smsp__)"
done
bc
bc_old
} >$O/run184.txt 2>&1
cat $O/run184.txt
date -u
