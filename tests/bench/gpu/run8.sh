#!/bin/sh
# Fused QK-norm + RoPE (more blocks in the backward) vs the two kernels, same call.
set -u
R=$PWD/.devrun
export MOE_DATADIR=$PWD/share NCCL_NVLS_ENABLE=0
B=$R/b
chmod +x $B/cmd/* $B/tests/*/*
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
echo "=== test_kernels"; LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 150 $B/tests/kernels/test_kernels 2>&1 | tail -1
export LD_LIBRARY_PATH=$R/lib
M=share/models/seed-base.json
for v in fused split fused split; do
	echo "=== MOE_CUDA_QKNORM_ROPE=$v profile B=16"
	MOE_CUDA_QKNORM_ROPE=$v timeout 100 $B/tests/bench/bench_cuda -m $M -B 16 -n 1 -w 2 -p 2>/dev/null | grep -E "qknorm|rope|rmsnorm|total|wall"
done
echo "=== ours B=16 (fused) / split"; timeout 120 $B/tests/bench/bench_cuda -m $M -B 16 -n 6 -w 2 2>/dev/null
MOE_CUDA_QKNORM_ROPE=split timeout 120 $B/tests/bench/bench_cuda -m $M -B 16 -n 6 -w 2 2>/dev/null
date -u
