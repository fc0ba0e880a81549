#!/bin/sh
# Session 24 (H200), call 180: the expert GEMMs' consumers wait for each
# k-slice's MMAs before moving on and give its stage back at once
# (wgmma.wait_group 0; MOE_CUDA_TMA_INFLIGHT=1: the old way, one k-slice
# of MMAs left in flight and its stage held), so the producer's look-ahead
# is three stages instead of two (call 179: the consumers found their next
# stage not yet loaded on 52% of k-slices, cuBLAS's on 5%).  Grouped tests,
# the same checkpoint bytes as 9811fee's build (oldb.tgz), bench_kernels
# -t against the old build and against INFLIGHT=1, steps interleaved,
# torch_ref.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
echo "=== test_kernels *grouped*"
tk 200 test_kernels '*grouped*' | grep -E "\[FAIL|Assert|Synthesis"
old_build
same_bytes $R/seed-3l.json
for r in 1 2; do
	for v in new old inflight1; do
		bk=$B/tests/bench/bench_kernels e=X=
		[ $v = old ] && bk=/tmp/oldb/bench_kernels
		[ $v = inflight1 ] && e=MOE_CUDA_TMA_INFLIGHT=1
		echo "--- $v bench_kernels -t -B 16"
		env $e timeout 120 $bk -t -B 16 2>&1 | grep -E "tma (fwd|dgrad|wgrad store).*cfg [013]|[1-9][0-9]* of [0-9]* elements differ"
	done
done
bc
bc_old
torch_seed
bc
bc_old
bc_as inflight1 MOE_CUDA_TMA_INFLIGHT=1
} >$O/run180.txt 2>&1
cat $O/run180.txt
date -u
