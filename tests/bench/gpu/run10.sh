#!/bin/sh
# Session 3, call 2: the lead's AdamW / sumsq / QK-norm changes on a GPU
# (test_kernels, test_backend), the step with and without them, the step
# with clipping active, a profile, and moe-train end to end on synthetic
# shards (its own tokens/s, beside bench_cuda's).
set -u
. "$(dirname "$0")/common.sh"
gpu_test test_kernels "Synthesis|FAIL|fused|experts" 8
gpu_test test_backend "expert GEMMs|cosine over|overwrite|fused|PASS|FAIL|Synthesis" 12
bc
MOE_CUDA_ADAMW=scalar bc
bc -c 0.01
bc
profile
echo "=== moe-train end to end (synthetic shards, 30 steps)"
$B/tests/train/mkdata /tmp/syn 60000 3 && ls -la /tmp/syn | head -5
timeout 200 $B/cmd/moe-train -m $M -d /tmp/syn -o /tmp/run --steps 30 --micro-batch 16 --seq-len 2048 \
	--eval-every 0 --ckpt-every 0 -q 2>&1 | tail -3
python3 - <<'PY'
import json, statistics
r=[json.loads(l) for l in open('/tmp/run/metrics.jsonl') if '"tokens_per_s"' in l]
t=[x['tokens_per_s'] for x in r][5:]
print("moe-train steps 6-30: median tokens/s %.0f (min %.0f, max %.0f), last loss %.4f, mfu %s" % (statistics.median(t), min(t), max(t), r[-1].get('loss', float('nan')), r[-1].get('mfu')))
PY
date -u
