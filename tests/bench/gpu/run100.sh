#!/bin/sh
# Session 14 (H100), call 100: the final code (fdb2c60's): moe-train itself
# for 20 steps (seed-base, micro-batch 16, synthetic shards, as call 89),
# and bench_cuda steps beside torch_ref.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run100.txt
{
bc
torch_seed
bc
$B/tests/train/mkdata /tmp/syn 60000 3 >/dev/null
echo "=== moe-train end to end (synthetic shards, 20 steps, seed-base B=16)"
rm -rf /tmp/run
timeout 150 $B/cmd/moe-train -m $M -d /tmp/syn -o /tmp/run --steps 20 --micro-batch 16 --seq-len 2048 \
	--eval-every 0 --ckpt-every 0 -q 2>&1 | tail -3
python3 - <<'PY'
import json, statistics
r=[json.loads(l) for l in open('/tmp/run/metrics.jsonl') if '"tokens_per_s"' in l]
t=[x['tokens_per_s'] for x in r][5:]
print("moe-train steps 6-%d: median tokens/s %.0f (min %.0f, max %.0f), first loss %.4f, last loss %.4f, mfu %s, device_mem %s" % (len(r), statistics.median(t), min(t), max(t), r[0].get('loss', float('nan')), r[-1].get('loss', float('nan')), r[-1].get('mfu'), r[-1].get('device_mem_bytes')))
PY
bc
date -u
} 2>&1 | tee $O
