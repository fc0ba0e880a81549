#!/bin/sh
# Session 20 (H200), call 149: the session's final build (swiglu_bwd_rows
# with 16 lanes a row; QK-norm + RoPE of q and k in one launch): both GPU
# test binaries whole, resume_gpu.sh, the same checkpoint bytes as
# 7326c8c's moe-train at I = 640 and 1024, seed-base beside torch_ref best_c;
# bench_kernels -m (the memory-bound kernels against a copy) on the H200.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
suites
same_bytes $R/seed-3l.json
same_bytes $R/i1024-3l.json
bc
torch_seed
bc
torch_seed
bc
echo "=== bench_kernels -m -B 16"
timeout 90 $B/tests/bench/bench_kernels -m -B 16 2>&1 | tail -14
} >$O/run149.txt 2>&1
cat $O/run149.txt
date -u
