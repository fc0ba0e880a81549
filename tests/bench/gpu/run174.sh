#!/bin/sh
# Session 23 (H200), call 174: the forward's and input gradient's last row
# tile (rows past offsets[E]) through TMA with the map's zero fill where
# max_rows is offsets[E], instead of the producer's cp.async (call 173's
# Nsight Compute: those tiles set the kernel's end).  The grouped and
# backend tests, the same checkpoint bytes as 6092e40's build (oldb.tgz),
# bench_kernels -t against that build's, steps interleaved, torch_ref.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
echo "=== test_kernels *grouped*"
tk 200 test_kernels '*grouped*' | grep -E "\[FAIL|Assert|Synthesis"
echo "=== test_backend (all)"
tk 150 test_backend '*' | grep -E "\[FAIL|Assert|Synthesis" | tail -8
same_bytes $R/seed-3l.json
for r in 1 2; do
	for v in new old; do
		bk=$B/tests/bench/bench_kernels
		[ $v = old ] && bk=/tmp/oldb/bench_kernels
		echo "--- $v bench_kernels -t -B 16"
		timeout 120 $bk -t -B 16 2>&1 | grep -E "tma (fwd|dgrad|wgrad store).*cfg 0|[1-9][0-9]* of [0-9]* elements differ"
	done
done
echo "--- new bench_kernels -t -B 16 -x"
timeout 120 $B/tests/bench/bench_kernels -t -B 16 -x 2>&1 | grep -E "tma (fwd|dgrad|wgrad store).*cfg 0"
bc
bc_old
torch_seed
bc
bc_old
} >$O/run174.txt 2>&1
cat $O/run174.txt
date -u
