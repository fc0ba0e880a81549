#!/bin/sh
# Session 22 (H200), call 165: call 164's change without the deferred
# dK += dS^T Q (slower at Dh 96 there): only lse and delta read into
# registers ahead of the waits (awg_pt_dv_dst).  The attention tests, the
# same checkpoint bytes as 6092e40's build (oldb.tgz), both builds'
# attention backward and steps interleaved, torch_ref best_c once.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
echo "=== test_kernels attention*"
tk 200 test_kernels 'kernels/attention*' | grep -E "\[PASS|\[FAIL|Assert|Synthesis"
same_bytes $R/seed-3l.json
for r in 1 2; do
	for v in new old; do
		bk=$B/tests/bench/bench_kernels
		[ $v = old ] && bk=/tmp/oldb/bench_kernels
		echo "--- $v bench_kernels -a"
		timeout 60 $bk -a -B 16 2>&1 | grep -E "bwd fa3f"
	done
done
for v in new old; do
	bk=$B/tests/bench/bench_kernels
	[ $v = old ] && bk=/tmp/oldb/bench_kernels
	timeout 60 $bk -a -B 8 -T 4096 -H 16 -d 128 2>&1 | grep -E "bwd fa3f" | sed "s/^/($v olmoe-like) /"
done
bc
bc_old
bc
bc_old
torch_seed
} >$O/run165.txt 2>&1
cat $O/run165.txt
date -u
