#!/bin/sh
# Session 3, call 6: the TMA grouped GEMMs as the default: test_backend, the
# step with tma (all three), tma-fd and wgmma in the same call, the 300-step
# CPU vs CUDA loss curves (tiny preset, the demo's shards), and moe-train end
# to end at seed-base.
set -u
. "$(dirname "$0")/common.sh"
gpu_test test_backend "expert GEMMs|cosine over|PASS|FAIL|Synthesis" 12
bc
MOE_CUDA_GROUPED=tma-fd bc; echo "(MOE_CUDA_GROUPED=tma-fd)"
MOE_CUDA_GROUPED=wgmma bc; echo "(MOE_CUDA_GROUPED=wgmma)"
bc
echo "=== curves: CURVE_DATA=$R/shards sh tests/train/gpu.sh $R/b 0"
CURVE_DATA=$R/shards timeout 300 sh tests/train/gpu.sh $R/b 0 2>&1 | tail -22
echo "=== moe-train end to end (synthetic shards, 30 steps, seed-base B=16)"
$B/tests/train/mkdata /tmp/syn 60000 3 >/dev/null
timeout 200 $B/cmd/moe-train -m $M -d /tmp/syn -o /tmp/run --steps 30 --micro-batch 16 --seq-len 2048 \
	--eval-every 0 --ckpt-every 0 -q 2>&1 | tail -3
python3 - <<'PY'
import json, statistics
r=[json.loads(l) for l in open('/tmp/run/metrics.jsonl') if '"tokens_per_s"' in l]
t=[x['tokens_per_s'] for x in r][5:]
print("moe-train steps 6-30: median tokens/s %.0f (min %.0f, max %.0f), last loss %.4f, mfu %s, device_mem %s" % (statistics.median(t), min(t), max(t), r[-1].get('loss', float('nan')), r[-1].get('mfu'), r[-1].get('device_mem_bytes')))
PY
date -u
