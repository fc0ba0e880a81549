#!/bin/sh
# Session 12 (H100), call 82: the tiny preset's 300-step CUDA curve on the
# demo shards with the session's numerics (yg-free routed backward, the
# router merged with the shared expert, SwiGLU without a division), against
# session 6's CPU curve (curve-cpu-s6-2026-11-27.jsonl; the same command).
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run82.txt
{
echo "=== tiny preset, 300 steps on the demo shards, CUDA (metrics to \$OUT/curve-cuda.jsonl)"
rm -rf /tmp/cur
s0=$(date +%s)
timeout 150 $B/cmd/moe-train --model tiny --data $R/shards --steps 300 --micro-batch 8 --seq-len 128 --warmup 5 \
	--lr 3e-3 --eval-every 50 --eval-batches 8 -q --device cuda --out /tmp/cur 2>&1 | tail -2
cp /tmp/cur/metrics.jsonl ${OUT:-/tmp}/curve-cuda.jsonl 2>/dev/null; echo "($(($(date +%s) - s0)) s)"
date -u
} 2>&1 | tee $O
