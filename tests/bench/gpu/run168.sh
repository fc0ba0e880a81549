#!/bin/sh
# Session 23 (H200), call 168: 23ae248 (session 22's review, not run on a
# card then) and 9a6c21d (the v1 kernels' mask under its own branch): every
# GPU test, the same checkpoint bytes as 6092e40's build (oldb.tgz), v1
# forward and backward timed against that build's, seed-base steps beside
# torch_ref.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
echo "=== test_kernels (all, timeout 250)"
tk 250 test_kernels '*' | grep -E "\[FAIL|Assert|Synthesis" | tail -20
echo "=== test_backend (all, timeout 150)"
tk 150 test_backend '*' | grep -E "cosine over|\[FAIL|Assert|Synthesis" | tail -12
same_bytes $R/seed-3l.json
for r in 1 2; do
	for v in new old; do
		bk=$B/tests/bench/bench_kernels
		[ $v = old ] && bk=/tmp/oldb/bench_kernels
		for d in 32 96; do
			timeout 60 $bk -a -B 16 -d $d 2>&1 | grep -E "(fwd|bwd) v1" | sed "s/^/($v Dh $d) /"
		done
	done
done
bc
bc_old
torch_seed
bc
bc_old
} >$O/run168.txt 2>&1
cat $O/run168.txt
date -u
