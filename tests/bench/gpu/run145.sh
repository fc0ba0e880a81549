#!/bin/sh
# Session 20 (H200), call 145: the build with MOE_CUDA_EXPERT_FUSE's fused
# wgmma kernels and MOE_CUDA_TMA_TAILSKIP removed: both GPU test binaries
# whole, resume_gpu.sh, the refused variables, the same checkpoint bytes as
# 7326c8c's moe-train (seed-3l.json), and seed-base steps of both builds
# beside torch_ref best_c, interleaved.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
suites
echo "=== moe-train with MOE_CUDA_EXPERT_FUSE=5"
$B/tests/train/mkdata /tmp/d 300 >/dev/null
MOE_CUDA_EXPERT_FUSE=5 timeout 60 $B/cmd/moe-train --model tiny --data /tmp/d --device cuda --steps 1 \
	--micro-batch 2 --seq-len 128 -q --out /tmp/r1 >/tmp/mt.out 2>&1
echo "rc=$?"
tail -2 /tmp/mt.out
same_bytes $R/seed-3l.json
bc
bc_old
torch_seed
bc
bc_old
torch_seed
bc
} >$O/run145.txt 2>&1
cat $O/run145.txt
date -u
