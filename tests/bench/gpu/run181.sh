#!/bin/sh
# Session 24 (H200), call 181: the forward's and input gradient's last two
# 64 x 64 blocks of a tile held as bf16 pairs and stored one a k-slice
# during the next tile's main loop (GT_HOLD 2; MOE_CUDA_TMA_DEFER=0 stores
# them after it, the old cost).  Grouped tests, the same checkpoint bytes
# as 9811fee's build (oldb.tgz), bench_kernels -t against the old build and
# DEFER=0, steps interleaved, torch_ref.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
echo "=== test_kernels *grouped*"
tk 200 test_kernels '*grouped*' | grep -E "\[FAIL|Assert|Synthesis"
old_build
same_bytes $R/seed-3l.json
for r in 1 2; do
	for v in new old defer0; do
		bk=$B/tests/bench/bench_kernels e=X=
		[ $v = old ] && bk=/tmp/oldb/bench_kernels
		[ $v = defer0 ] && e=MOE_CUDA_TMA_DEFER=0
		echo "--- $v bench_kernels -t -B 16"
		env $e timeout 120 $bk -t -B 16 2>&1 | grep -E "tma (fwd|dgrad|wgrad store).*cfg [03]|[1-9][0-9]* of [0-9]* elements differ"
	done
done
bc
bc_old
torch_seed
bc
bc_old
bc_as defer0 MOE_CUDA_TMA_DEFER=0
} >$O/run181.txt 2>&1
cat $O/run181.txt
date -u
