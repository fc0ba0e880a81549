#!/bin/sh
# Session 24 (H200), call 182: held blocks again, GT_HOLD 2 (the build)
# against 3 (oldb/bench_kernels_h3: grouped_tma.cu alone rebuilt with
# -DGT_HOLD=3, 12 bytes of spills in one kernel) and 9811fee's build,
# bench_kernels -t interleaved; all of test_backend with the new kernels;
# steps interleaved with the old build.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
old_build
for r in 1 2; do
	for v in hold2 hold3 old; do
		bk=$B/tests/bench/bench_kernels
		[ $v = old ] && bk=/tmp/oldb/bench_kernels
		[ $v = hold3 ] && bk=/tmp/oldb/bench_kernels_h3
		echo "--- $v bench_kernels -t -B 16"
		timeout 120 $bk -t -B 16 2>&1 | grep -E "tma (fwd|dgrad|wgrad store).*cfg 0|[1-9][0-9]* of [0-9]* elements differ"
	done
done
echo "=== test_backend (all)"
tk 150 test_backend '*' | grep -E "\[FAIL|Assert|Synthesis" | tail -8
bc
bc_old
bc
bc_old
} >$O/run182.txt 2>&1
cat $O/run182.txt
date -u
