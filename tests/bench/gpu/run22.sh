#!/bin/sh
# Session 5, call 1: the review-pass code (cef5e8e) on a GPU: both GPU test
# binaries, the optimizer-stream test against its one-stream control
# (run_overlap.sh), the default step beside torch_ref best_c, the optimizer
# stream as a step, a profile, the 300-step CPU/CUDA curves with the
# checkpoint evaluated on both backends, and moe-train end to end.
set -u
. "$(dirname "$0")/common.sh"
gpu_test test_kernels "PASS|FAIL|Synthesis" 30
gpu_test test_backend "cosine over|PASS|FAIL|Synthesis" 12
N=${N:-12} sh "$(dirname "$0")/run_overlap.sh" 2>&1 | grep -v "^NVIDIA\|UTC" 
bc
torch_seed
bc
MOE_CUDA_OVERLAP=1 bc; echo "(MOE_CUDA_OVERLAP=1)"
bc
profile
echo "=== curves: CURVE_DATA=$R/shards sh tests/train/gpu.sh $R/b 0"
CURVE_DATA=$R/shards timeout 240 sh tests/train/gpu.sh $R/b 0 2>&1 | tail -24
echo "=== moe-train end to end (synthetic shards, 30 steps, seed-base B=16)"
$B/tests/train/mkdata /tmp/syn 60000 3 >/dev/null
timeout 120 $B/cmd/moe-train -m $M -d /tmp/syn -o /tmp/run --steps 30 --micro-batch 16 --seq-len 2048 \
	--eval-every 0 --ckpt-every 0 -q 2>&1 | tail -3
python3 - <<'PY'
import json, statistics
r=[json.loads(l) for l in open('/tmp/run/metrics.jsonl') if '"tokens_per_s"' in l]
t=[x['tokens_per_s'] for x in r][5:]
print("moe-train steps 6-30: median tokens/s %.0f (min %.0f, max %.0f), last loss %.4f, mfu %s, device_mem %s" % (statistics.median(t), min(t), max(t), r[-1].get('loss', float('nan')), r[-1].get('mfu'), r[-1].get('device_mem_bytes')))
PY
date -u
