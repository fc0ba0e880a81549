#!/bin/sh
# Lead's final H100 call: correctness, seed-base B=16 beside torch_ref best_c,
# one profiled step, and moe-fetch cat vs pyarrow on this host's CPU.
set -u
. "$(dirname "$0")/common.sh"
gpu_test test_kernels "Synthesis|FAIL" 6
gpu_test test_backend "expert GEMMs|cosine over|PASS|FAIL|Synthesis" 8
bc
torch_seed
bc
profile
F=$R/pq/sotu-snappy-v1.parquet
echo "=== parquet: bench_parquet -a (libsnappy, own, own generic)"; timeout 90 $B/tests/bench/bench_parquet -a -n 5 -r 20 $F
echo "=== parquet: moe-fetch cat, whole process"; REPS=20 RUNS=3 timeout 60 sh tests/bench/bench_parquet.sh $B/cmd/moe-fetch $F
echo "=== parquet: moe-fetch cat with libsnappy"; MOE_PARQUET_SNAPPY=libsnappy REPS=20 RUNS=3 timeout 60 sh tests/bench/bench_parquet.sh $B/cmd/moe-fetch $F
echo "=== parquet: pyarrow, one thread"; timeout 60 python3 tests/bench/bench_parquet_pyarrow.py --reps 20 --runs 3 $F
date -u
