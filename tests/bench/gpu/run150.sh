#!/bin/sh
# Session 20 (H200), call 150: QK-norm + RoPE's forward prefetching its
# position's cos/sin rows into L1 while the row loads (an experiment on
# 8bbdc5c; oldb.tgz here is 8bbdc5c's build): the qknorm tests, the same
# checkpoint bytes as 8bbdc5c's moe-train, per-op profiles interleaved.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
prof() { # LABEL BENCH_CUDA
	echo "--- profile $1"
	timeout 100 $2 -m $M -B 16 -n 1 -w 2 -p 2>/dev/null | grep -E "qknorm|total" | head -4
}
{
echo "=== test_kernels qknorm*"
tk 150 test_kernels 'kernels/qknorm*' | grep -E "\[PASS|\[FAIL|Assert|Synthesis|bits"
same_bytes $R/seed-3l.json
old_build
for k in 1 2 3; do
	prof prefetch $B/tests/bench/bench_cuda
	prof 8bbdc5c /tmp/oldb/bench_cuda
done
} >$O/run150.txt 2>&1
cat $O/run150.txt
date -u
