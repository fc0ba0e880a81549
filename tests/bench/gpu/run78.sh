#!/bin/sh
# Session 12 (H100), call 78: the session's code validated and measured
# (yg-free routed backward, router merged with the shared gate_up, SwiGLU
# without a division, routing counts in one read-back):
#  1. both GPU test binaries whole, resume_gpu.sh;
#  2. seed-base steps interleaved: default, both switches off
#     (MOE_CUDA_YG=keep MOE_CUDA_ROUTER_MERGE=0), SwiGLU in the gate_up
#     epilogue (MOE_CUDA_TMA_FUSE=1, tried again), torch_ref best_c;
#  3. ktrace of the default.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run78.txt
off() { bc_as "yg kept, router apart" "MOE_CUDA_YG=keep MOE_CUDA_ROUTER_MERGE=0"; }
tf1() { bc_as "tma fuse 1" "MOE_CUDA_TMA_FUSE=1"; }
{
suites
date -u
echo "=== 2. seed-base steps"
bc
off
tf1
torch_seed
bc
off
tf1
bc
date -u
echo "=== 3. ktrace, bench_cuda -n 3 -w 2"
ktr kt78
date -u
} 2>&1 | tee $O
