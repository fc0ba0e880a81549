#!/bin/sh
# Full activation recompute on the H100: correctness (test_backend) and
# seed-base step time / peak memory at B=16 and B=32.
set -u
. "$(dirname "$0")/common.sh"
gpu_test test_backend "expert GEMMs|cosine over|PASS|FAIL|Synthesis" 8
bc
bc -R
echo "--- bench_cuda -B 32 -R"; timeout 150 $B/tests/bench/bench_cuda -m $M -B 32 -n 4 -w 2 -R 2>&1 | grep -v "^step"
date -u
