#!/bin/sh
# Session 24 (H200), call 183: the held blocks as committed (GT_HOLD 2, no
# switch, the pack helper shared with the expert's last tile): grouped
# tests, all of test_backend, the same checkpoint bytes as 9811fee's build
# (oldb.tgz), bench_kernels -t against it, steps interleaved.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
echo "=== test_kernels *grouped*"
tk 200 test_kernels '*grouped*' | grep -E "\[FAIL|Assert|Synthesis"
echo "=== test_backend (all)"
tk 150 test_backend '*' | grep -E "\[FAIL|Assert|Synthesis" | tail -8
old_build
same_bytes $R/seed-3l.json
for v in new old; do
	bk=$B/tests/bench/bench_kernels
	[ $v = old ] && bk=/tmp/oldb/bench_kernels
	echo "--- $v bench_kernels -t -B 16"
	timeout 120 $bk -t -B 16 2>&1 | grep -E "tma (fwd|dgrad|wgrad store).*cfg 0|[1-9][0-9]* of [0-9]* elements differ"
done
bc
bc_old
} >$O/run183.txt 2>&1
cat $O/run183.txt
date -u
