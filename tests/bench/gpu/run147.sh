#!/bin/sh
# Session 20 (H200), call 147: swiglu_bwd_rows with 16 lanes a row
# (swiglu_bwd_rows16_kernel): its test (the CPU reference and the old
# layout's bits), test_backend whole, the same checkpoint bytes as
# 7326c8c's moe-train at I = 640 (seed-3l.json) and 1024 (i1024-3l.json),
# per-op profiles of both builds' seed-base steps, steps interleaved.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
echo "=== test_kernels swiglu*"
tk 120 test_kernels 'kernels/swiglu*' | grep -E "\[PASS|\[FAIL|Assert|Synthesis|differs"
echo "=== test_backend (all)"
tk 120 test_backend '*' | grep -E "\[FAIL|Assert|Synthesis" | tail -8
same_bytes $R/seed-3l.json
same_bytes $R/i1024-3l.json
old_build
for k in 1 2; do
	profile_of new "swiglu|step|total" $B/tests/bench/bench_cuda
	profile_of old "swiglu|step|total" /tmp/oldb/bench_cuda
done
for k in 1 2 3; do
	bc
	bc_old
done
} >$O/run147.txt 2>&1
cat $O/run147.txt
date -u
