#!/bin/sh
# Session 3, call 4: HEAD after the wgmma attention backward (test_kernels,
# test_backend), the step, a profile, and the dense cuBLAS GEMMs of the step
# shape by shape (bench_gemm).
set -u
R=$PWD/${RUNDIR:-.devrun}
export MOE_DATADIR=$PWD/share NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
B=$R/b
chmod +x $B/cmd/* $B/tests/*/*
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; date -u
echo "=== test_kernels"; LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 200 $B/tests/kernels/test_kernels 2>&1 | grep -v "^\[----\]" | tail -4
echo "=== test_backend"; LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 200 $B/tests/kernels/test_backend --verbose 2>&1 | grep -E "cosine over|overwrite, expert GEMMs 'wgmma'|PASS|FAIL|Synthesis" | tail -8
export LD_LIBRARY_PATH=$R/lib
M=share/models/seed-base.json
bc() { echo "--- bench_cuda $*"; timeout 120 $B/tests/bench/bench_cuda -m $M -B 16 -n 6 -w 2 "$@" 2>/tmp/bc.err; tail -1 /tmp/bc.err; }
bc
echo "=== bench_gemm"; timeout 120 $B/tests/bench/bench_gemm -B 16
bc
echo "=== profile B=16"; timeout 100 $B/tests/bench/bench_cuda -m $M -B 16 -n 1 -w 2 -p 2>/dev/null | tail -n +2
date -u
