#!/bin/sh
# Lead's GPU call 1: correctness of the CUDA backend after the memory changes,
# seed-base B=16 step time/memory with a profile, 300-step curves.
set -u
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH=$PWD/.devrun/lib:${LD_LIBRARY_PATH:-}
export MOE_DATADIR=$PWD/share
B=$PWD/.devrun/b
chmod +x $B/cmd/* $B/tests/*/*
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; date -u
echo "=== test_kernels"; timeout 120 $B/tests/kernels/test_kernels 2>&1 | tail -4
echo "=== test_backend"; timeout 120 $B/tests/kernels/test_backend --verbose 2>&1 | grep -v "^\[----\] *$" | tail -25
M=share/models/seed-base.json
echo "=== bench B=16"; timeout 150 $B/tests/bench/bench_cuda -m $M -B 16 -n 6 -w 2 2>&1 | grep -v '^step [3-9]'
echo "=== profile B=16"; timeout 100 $B/tests/bench/bench_cuda -m $M -B 16 -n 1 -w 2 -p 2>/dev/null
echo "=== curves"; CURVE_DATA=.devrun/shards timeout 200 sh tests/train/gpu.sh $B 0 2>&1 | tail -45
date -u
