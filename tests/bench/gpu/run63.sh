#!/bin/sh
# Session 11 (H100), call 63: the query's QK-norm backward reading fa3f's
# fp32 dQ tiles (b49c7b4), and two measurements by switch:
#  1. the new kernel test first, then both GPU test binaries whole and
#     resume_gpu.sh;
#  2. seed-base steps interleaved: default (dq from the tiles),
#     MOE_CUDA_DQ_FUSE=0 (the conversion kernel, session 10's path),
#     MOE_CUDA_GEMM_WS=0 (cuBLAS without a workspace: does it drop the
#     memset before each nvjet kernel?), MOE_CUDA_ATTENTION_FWD=fa3pk128
#     (session 6's persistent forward, 5-7% faster as a kernel), torch_ref
#     best_c in the same call;
#  3. one profiled step; ktrace of the default and of MOE_CUDA_GEMM_WS=0.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run63.txt
{
echo "=== 1. qknorm_rope_from_dq_tiles"
tk 60 test_kernels 'kernels/qknorm_rope_from_dq_tiles' | grep -E "qknorm from|\[FAIL|Assert|Synthesis" | tail -8
suites
date -u
echo "=== 2. seed-base steps"
for k in 1 2; do
	bc
	MOE_CUDA_DQ_FUSE=0 bc
	MOE_CUDA_GEMM_WS=0 bc
	MOE_CUDA_ATTENTION_FWD=fa3pk128 bc
	[ $k = 1 ] && torch_seed
done
bc
date -u
profile
echo "=== 3. ktrace default, bench_cuda -n 3 -w 2"
ktr kt63-default
echo "=== 3. ktrace WS0, bench_cuda -n 3 -w 2"
ktr kt63-WS0 MOE_CUDA_GEMM_WS=0
date -u
} 2>&1 | tee $O
