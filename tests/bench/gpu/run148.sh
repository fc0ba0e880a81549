#!/bin/sh
# Session 20 (H200), call 148: QK-norm + RoPE of q and k in one launch
# (moe_cuda_qknorm_rope_fwd2_ld; MOE_CUDA_QK_PAIR=0 the two launches, an
# experiment switch) beside call 147's swiglu_bwd_rows: the qknorm tests
# (the two-tensor launch's bits against single launches), test_backend
# whole, the same checkpoint bytes as 7326c8c (seed-3l.json), per-op
# profiles with and without, steps of this build and 7326c8c's interleaved.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
F='qknorm|swiglu_bwd_rows|total|wall'
{
echo "=== test_kernels qknorm*, swiglu*"
tk 150 test_kernels 'kernels/qknorm*' | grep -E "\[PASS|\[FAIL|Assert|Synthesis|bits"
echo "=== test_backend (all)"
tk 120 test_backend '*' | grep -E "\[FAIL|Assert|Synthesis" | tail -8
same_bytes $R/seed-3l.json
old_build
for k in 1 2; do
	profile_of pair "$F" $B/tests/bench/bench_cuda
	profile_of two "$F" $B/tests/bench/bench_cuda MOE_CUDA_QK_PAIR=0
	profile_of old "$F" /tmp/oldb/bench_cuda
done
for k in 1 2 3; do
	bc
	bc_old
done
} >$O/run148.txt 2>&1
cat $O/run148.txt
date -u
