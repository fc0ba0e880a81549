#!/bin/sh
# Session 22 (H200), call 166: the causal mask under its own branch also in
# the Dh 64 defaults (forward wg, backward wge's dQ kernel) and fa3's dQ
# kernel.  The attention tests (every variant against the CPU reference),
# both builds' attention kernels at Dh 64 (B 16, T 2048, H 12) and at
# seed-base; old = 6092e40's build.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
old_build
{
echo "=== test_kernels attention*"
tk 200 test_kernels 'kernels/attention*' | grep -E "\[PASS|\[FAIL|Assert|Synthesis"
for r in 1 2; do
	for v in new old; do
		bk=$B/tests/bench/bench_kernels
		[ $v = old ] && bk=/tmp/oldb/bench_kernels
		timeout 60 $bk -a -B 16 -T 2048 -H 12 -d 64 2>&1 | grep -E "fwd wg |bwd wge |bwd fa3 |default" | sed "s/^/($v Dh64) /"
	done
done
} >$O/run166.txt 2>&1
cat $O/run166.txt
date -u
