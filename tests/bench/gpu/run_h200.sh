#!/bin/sh
# Session 3, H200 call: olmoe-1b-7b on one card (needs more than 80 GB: one
# H200) at the largest micro-batch that fits beside torch_ref --preset olmoe
# (run_olmoe.sh), then the 300-step CPU vs CUDA loss curves of the tiny
# preset on the demo's shards with this session's kernels.
set -u
. "$(dirname "$0")/common.sh"
sh "$(dirname "$0")/run_olmoe.sh"
echo "=== curves: CURVE_DATA=$R/shards sh tests/train/gpu.sh $R/b 0"
CURVE_DATA=$R/shards timeout 400 sh tests/train/gpu.sh $R/b 0 2>&1 | tail -25
date -u
