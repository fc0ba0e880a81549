#!/bin/sh
# Session 4, call 1: AdamW and the gradient norms on the optimizer stream
# (MOE_CUDA_OVERLAP, default on): test_backend (incl. the stream against one
# stream), the step with and without it, interleaved, and moe-train end to
# end both ways.
set -u
. "$(dirname "$0")/common.sh"
gpu_test test_backend "optimizer stream|cosine over|overwrite, expert GEMMs 'tma'|PASS|FAIL|Synthesis" 14
bc
MOE_CUDA_OVERLAP=0 bc; echo "(MOE_CUDA_OVERLAP=0)"
bc
MOE_CUDA_OVERLAP=0 bc; echo "(MOE_CUDA_OVERLAP=0)"
$B/tests/train/mkdata /tmp/syn 60000 3 >/dev/null
for ov in 1 0; do
	echo "=== moe-train end to end (synthetic shards, 30 steps, seed-base B=16), MOE_CUDA_OVERLAP=$ov"
	rm -rf /tmp/run
	MOE_CUDA_OVERLAP=$ov timeout 200 $B/cmd/moe-train -m $M -d /tmp/syn -o /tmp/run --steps 30 --micro-batch 16 \
		--seq-len 2048 --eval-every 0 --ckpt-every 0 -q 2>&1 | tail -3
	python3 - <<'PY'
import json, statistics
r=[json.loads(l) for l in open('/tmp/run/metrics.jsonl') if '"tokens_per_s"' in l]
t=[x['tokens_per_s'] for x in r][5:]
print("moe-train steps 6-30: median tokens/s %.0f (min %.0f, max %.0f), last loss %.6f, mfu %s, device_mem %s" % (statistics.median(t), min(t), max(t), r[-1].get('loss', float('nan')), r[-1].get('mfu'), r[-1].get('device_mem_bytes')))
PY
done
date -u
