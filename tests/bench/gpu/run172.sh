#!/bin/sh
# Session 23 (H200), call 172: the expert GEMMs' partial 64-row blocks (the
# block an expert's rows end in) stored 16 bytes a thread after a quad
# transpose instead of 4-byte pairs (grouped_tma.cu).  The grouped and
# backend tests, the same checkpoint bytes as 6092e40's build (oldb.tgz),
# bench_kernels -t against that build's (multinomial routing; -x whole
# tiles for the new one), steps interleaved, torch_ref once.
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
		timeout 120 $bk -t -B 16 2>&1 | grep -E "tma (fwd|dgrad|wgrad store).*cfg 0|differ"
	done
done
echo "--- new bench_kernels -t -B 16 -x"
timeout 120 $B/tests/bench/bench_kernels -t -B 16 -x 2>&1 | grep -E "tma (fwd|dgrad|wgrad store).*cfg 0"
bc
bc_old
torch_seed
bc
bc_old
} >$O/run172.txt 2>&1
cat $O/run172.txt
date -u
