#!/bin/sh
# Session 22 (H200), call 164: fa3f at Dh 96 with dK += dS^T Q left running
# while the tile's dQ is staged (waited for at the next round's first wait;
# the stage's release moves there), and lse / delta read into registers
# ahead of the waits (awg_pt_dv_dst, every backward that uses it).  The
# attention tests, test_backend, the same checkpoint bytes as 6092e40's
# build (oldb.tgz: the committed mask change), both builds' attention
# kernels and steps interleaved, torch_ref best_c once.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
echo "=== test_kernels attention*"
tk 200 test_kernels 'kernels/attention*' | grep -E "\[PASS|\[FAIL|Assert|Synthesis"
echo "=== test_backend (all)"
tk 120 test_backend '*' | grep -E "\[FAIL|Assert|Synthesis" | tail -8
same_bytes $R/seed-3l.json
for r in 1 2; do
	for v in new old; do
		bk=$B/tests/bench/bench_kernels
		[ $v = old ] && bk=/tmp/oldb/bench_kernels
		echo "--- $v bench_kernels -a"
		timeout 60 $bk -a -B 16 2>&1 | grep -E "fwd fa3pk128 \(def|bwd fa3f"
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
} >$O/run164.txt 2>&1
cat $O/run164.txt
date -u
