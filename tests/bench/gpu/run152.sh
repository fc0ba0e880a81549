#!/bin/sh
# Session 21 (H200), call 152: the grouped TMA GEMMs' forward and input
# gradient in clusters of two blocks, each loading half of the shared W
# tile into both (TMA multicast; configurations 1 and 3, against 2 and 4
# without clusters): bench_kernels -t first (a hang stops the script),
# the grouped_tma tests (CPU reference and the bytes of the unclustered
# runs), the same checkpoint bytes as 8bbdc5c's moe-train, then seed-base
# steps interleaved with 8bbdc5c's bench_cuda.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
echo "=== bench_kernels -t -B 16"
timeout 60 $B/tests/bench/bench_kernels -t -B 16 >/tmp/bk.out 2>&1
rc=$?
sed '/^attention/q' /tmp/bk.out
echo "rc=$rc"
[ $rc = 124 ] && { echo "bench_kernels hung: stopping"; exit 1; }
echo "=== test_kernels grouped_tma*"
tk 200 test_kernels 'kernels/grouped_tma*' | grep -E "\[PASS|\[FAIL|Assert|Synthesis"
same_bytes $R/seed-3l.json
bc
bc_old
bc
bc_old
} >$O/run152.txt 2>&1
cat $O/run152.txt
date -u
