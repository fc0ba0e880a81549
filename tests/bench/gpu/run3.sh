#!/bin/sh
# Lead's final H100 call: correctness, seed-base B=16 beside torch_ref best_c,
# one profiled step, and moe-fetch cat vs pyarrow on this host's CPU.
set -u
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
R=$PWD/.devrun
export MOE_DATADIR=$PWD/share
B=$R/b
chmod +x $B/cmd/* $B/tests/*/*
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; date -u
echo "=== test_kernels"; LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 150 $B/tests/kernels/test_kernels 2>&1 | grep -v "^\[----\]" | tail -6
echo "=== test_backend"; LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 120 $B/tests/kernels/test_backend --verbose 2>&1 | grep -E "expert GEMMs|cosine over|PASS|FAIL|Synthesis" | tail -8
export LD_LIBRARY_PATH=$R/lib
M=share/models/seed-base.json
echo "=== ours B=16"; timeout 120 $B/tests/bench/bench_cuda -m $M -B 16 -n 6 -w 2 2>/dev/null
echo "=== torch_ref best_c B=16"; timeout 240 python3 $R/torch_ref.py --preset seed --modes best_c 2>&1 | grep -v Warning | tail -3
echo "=== ours B=16 again"; timeout 120 $B/tests/bench/bench_cuda -m $M -B 16 -n 6 -w 2 2>/dev/null
echo "=== profile B=16"; timeout 100 $B/tests/bench/bench_cuda -m $M -B 16 -n 1 -w 2 -p 2>/dev/null | tail -n +2
F=$R/pq/sotu-snappy-v1.parquet
echo "=== parquet: bench_parquet -a (libsnappy, own, own generic)"; timeout 90 $B/tests/bench/bench_parquet -a -n 5 -r 20 $F
echo "=== parquet: moe-fetch cat, whole process"; REPS=20 RUNS=3 timeout 60 sh tests/bench/bench_parquet.sh $B/cmd/moe-fetch $F
echo "=== parquet: moe-fetch cat with libsnappy"; MOE_PARQUET_SNAPPY=libsnappy REPS=20 RUNS=3 timeout 60 sh tests/bench/bench_parquet.sh $B/cmd/moe-fetch $F
echo "=== parquet: pyarrow, one thread"; timeout 60 python3 tests/bench/bench_parquet_pyarrow.py --reps 20 --runs 3 $F
date -u
