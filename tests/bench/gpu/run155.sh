#!/bin/sh
# Session 21 (H200), call 155: stmatrix for two shared-memory stores of bf16
# fragments (the grouped TMA GEMMs' forward / input-gradient epilogue, and
# fa3f's dS^T each tile): the attention and grouped_tma tests, the same
# checkpoint bytes as 7d17d62's build (oldb.tgz, with its bench_kernels),
# both builds' kernels (bench_kernels -t, -a) and per-op profiles
# interleaved, then steps.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
echo "=== test_kernels attention*, grouped_tma*"
tk 200 test_kernels 'kernels/attention*' | grep -E "\[FAIL|Assert|Synthesis"
tk 100 test_kernels 'kernels/grouped_tma*' | grep -E "\[PASS|\[FAIL|Assert|Synthesis"
same_bytes $R/seed-3l.json
for r in 1 2; do
	for v in new old; do
		bk=$B/tests/bench/bench_kernels
		[ $v = old ] && bk=/tmp/oldb/bench_kernels
		echo "--- $v bench_kernels -t, -a"
		timeout 60 $bk -t -B 16 2>&1 | sed '/^attention/q' | grep -E "cfg 0|differ" | grep -v " 0 of "
		timeout 60 $bk -a -B 16 2>&1 | grep -E "bwd fa3f "
	done
done
for r in 1 2; do
	profile_of new "grouped|attention|step" $B/tests/bench/bench_cuda
	profile_of old "grouped|attention|step" /tmp/oldb/bench_cuda
done
bc
bc_old
bc
bc_old
} >$O/run155.txt 2>&1
cat $O/run155.txt
date -u
