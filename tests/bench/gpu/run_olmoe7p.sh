#!/bin/sh
# Session 7, H200: where an olmoe-1b-7b step goes (seq 4096, micro-batch 3,
# the largest that fits; one profiled step, CUDA events per op), for the
# per-op table of RESULTS-cuda.md.  Writes $OUT/run_olmoe7p.txt.
set -u
. "$(dirname "$0")/common.sh"
M=share/models/olmoe-1b-7b.json
O=${OUT:-/tmp}/run_olmoe7p.txt
{
echo "=== profile olmoe-1b-7b B=3 T=4096"
timeout 200 $B/tests/bench/bench_cuda -m $M -T 4096 -B 3 -n 1 -w 2 -p 2>/tmp/o.err | tail -n +1
tail -2 /tmp/o.err
date -u
} 2>&1 | tee $O
