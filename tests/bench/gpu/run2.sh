#!/bin/sh
# CUDA routes parity analysis + moe-routes stats benchmark (one device call).
set -u
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH=$PWD/.devpack/lib:${LD_LIBRARY_PATH:-}
B=$PWD/.devpack/b S=$PWD
chmod +x $B/cmd/*
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc; grep -m1 'model name' /proc/cpuinfo; date -u
echo "=== routes parity (CUDA bf16 trace) with --analyze/--bf16"
timeout 75 sh tests/bench/parity_routes.sh $B $S 2>&1 | tee $OUT/parity.log | grep -v 'Loading weights\|LOAD REPORT\|^Key\|^---\|UNEXPECTED\|^Notes\|can be ignored'
echo "=== bench_routes 10M x 18"
date -u
timeout 75 sh tests/bench/bench_routes.sh $B 10000000 1 16 2>&1 | tee $OUT/bench.log
echo "=== done"; date -u
