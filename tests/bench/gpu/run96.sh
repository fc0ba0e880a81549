#!/bin/sh
# Session 14 (H100), call 96: the persistent 128-key attention forward
# (MOE_CUDA_ATTENTION_FWD=fa3pk128) against the default (fa3) inside the
# step: a kernel trace of each, bench_kernels -a at seed-base and at the
# olmoe shape (B 3, T 4096, 16 heads of 128), and seed-base steps
# interleaved three times beside torch_ref.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run96.txt
{
echo "=== bench_kernels -a -B 16 (seed-base)"
timeout 60 $B/tests/bench/bench_kernels -a -B 16 2>&1 | grep -E "fwd fa3|fwd fa3p"
echo "=== bench_kernels -a -B 3 -T 4096 -H 16 -d 128 (olmoe shape)"
timeout 90 $B/tests/bench/bench_kernels -a -B 3 -T 4096 -H 16 -d 128 2>&1 | grep -E "fwd fa3|fwd fa3p"
echo "=== ktrace, default"
ktr ktrace-s14-call96-fa3
echo "=== ktrace, fa3pk128"
ktr ktrace-s14-call96-fa3pk128 MOE_CUDA_ATTENTION_FWD=fa3pk128
bc
bc_as "fa3pk128" "MOE_CUDA_ATTENTION_FWD=fa3pk128"
bc
bc_as "fa3pk128" "MOE_CUDA_ATTENTION_FWD=fa3pk128"
torch_seed
bc
bc_as "fa3pk128" "MOE_CUDA_ATTENTION_FWD=fa3pk128"
date -u
} 2>&1 | tee $O
