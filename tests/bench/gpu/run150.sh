#!/bin/sh
# Session 20 (H200), call 150: QK-norm + RoPE's forward prefetching its
# position's cos/sin rows into L1 while the row loads (an experiment on
# 8bbdc5c; oldb.tgz here is 8bbdc5c's build): the qknorm tests, the same
# checkpoint bytes as 8bbdc5c's moe-train, per-op profiles interleaved.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
echo "=== test_kernels qknorm*"
tk 150 test_kernels 'kernels/qknorm*' | grep -E "\[PASS|\[FAIL|Assert|Synthesis|bits"
same_bytes $R/seed-3l.json
old_build
for k in 1 2 3; do
	profile_of prefetch "qknorm|total" $B/tests/bench/bench_cuda
	profile_of 8bbdc5c "qknorm|total" /tmp/oldb/bench_cuda
done
} >$O/run150.txt 2>&1
cat $O/run150.txt
date -u
