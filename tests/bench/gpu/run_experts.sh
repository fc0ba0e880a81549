#!/bin/sh
# Routed-expert fusion (MOE_CUDA_EXPERT_FUSE bits: 1 gate_up forward with
# gather + SwiGLU, 2 down dgrad + SwiGLU backward, 4 gate_up wgrad on the
# gathered rows; 0 unfused): the GPU tests, then the seed-base step (B=16)
# for each value of FUSE, then one profiled step for the first two.
#   PACK=.devrunexp FUSE='0 5 1 4 0 5' sh tests/bench/gpu/run_experts.sh
# (PACK: the folder pack.sh wrote, carried to the device.)
set -u
. "$(dirname "$0")/common.sh"
FUSE=${FUSE:-0 5 1 4 0 5}
echo "=== test_kernels"; LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 150 $B/tests/kernels/test_kernels 2>&1
echo "=== test_backend"; LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 150 $B/tests/kernels/test_backend 2>&1
for f in $FUSE; do
	echo "=== MOE_CUDA_EXPERT_FUSE=$f bench_cuda -m $M -B 16 -n 6 -w 2"
	MOE_CUDA_EXPERT_FUSE=$f timeout 100 $B/tests/bench/bench_cuda -m $M -B 16 -n 6 -w 2 2>&1 | tail -1
done
for f in $(echo $FUSE | cut -d' ' -f1-2); do
	echo "=== MOE_CUDA_EXPERT_FUSE=$f bench_cuda -m $M -B 16 -n 1 -w 2 -p"
	MOE_CUDA_EXPERT_FUSE=$f timeout 100 $B/tests/bench/bench_cuda -m $M -B 16 -n 1 -w 2 -p 2>&1 | tail -45
done
date -u
