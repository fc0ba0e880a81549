#!/bin/sh
# Full activation recompute on the H100: correctness (test_backend) and
# seed-base step time / peak memory at B=16 and B=32.
set -u
R=$PWD/.devrun
export MOE_DATADIR=$PWD/share NCCL_NVLS_ENABLE=0
B=$R/b
chmod +x $B/cmd/* $B/tests/*/*
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; date -u
echo "=== test_backend"; LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 120 $B/tests/kernels/test_backend --verbose 2>&1 | grep -E "expert GEMMs|cosine over|PASS|FAIL|Synthesis" | tail -8
export LD_LIBRARY_PATH=$R/lib
M=share/models/seed-base.json
echo "=== ours B=16 (default)"; timeout 120 $B/tests/bench/bench_cuda -m $M -B 16 -n 6 -w 2 2>/dev/null
echo "=== ours B=16 --recompute full"; timeout 120 $B/tests/bench/bench_cuda -m $M -B 16 -n 6 -w 2 -R 2>/dev/null
echo "=== ours B=32 --recompute full"; timeout 150 $B/tests/bench/bench_cuda -m $M -B 32 -n 4 -w 2 -R 2>&1 | grep -v "^step"
date -u
