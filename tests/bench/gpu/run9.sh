#!/bin/sh
# Session 3, call 1: the session-2 review refactors on a GPU (test_kernels,
# test_backend), then today's baseline: ours beside torch_ref best_c, and one
# profiled step.
set -u
R=$PWD/.devrun
export MOE_DATADIR=$PWD/share NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
B=$R/b
chmod +x $B/cmd/* $B/tests/*/*
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; date -u
echo "=== test_kernels"; LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 150 $B/tests/kernels/test_kernels 2>&1 | grep -v "^\[----\]" | tail -6
echo "=== test_backend"; LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 120 $B/tests/kernels/test_backend --verbose 2>&1 | grep -E "expert GEMMs|cosine over|PASS|FAIL|Synthesis" | tail -8
export LD_LIBRARY_PATH=$R/lib
M=share/models/seed-base.json
echo "=== ours B=16"; timeout 120 $B/tests/bench/bench_cuda -m $M -B 16 -n 6 -w 2 2>/dev/null
echo "=== torch_ref best_c B=16"; timeout 240 python3 $R/torch_ref.py --preset seed --modes best_c 2>&1 | grep -v Warning | tail -2
echo "=== profile B=16"; timeout 100 $B/tests/bench/bench_cuda -m $M -B 16 -n 1 -w 2 -p 2>/dev/null
echo "=== kernels B=16"; timeout 100 $B/tests/bench/bench_kernels -B 16 2>/dev/null
which nsys ncu 2>/dev/null; ls /usr/local/cuda/bin | grep -E "nsys|ncu" 
date -u
