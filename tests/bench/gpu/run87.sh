#!/bin/sh
# Session 13 (H100), call 87: the host side of a step (50b8b24): routing
# statistics at the forward's sync, uploads through pinned buffers, no
# synchronisation at a step's end (bench_cuda -S restores it), one
# synchronisation in b_sync.  The tests those touch (test_backend whole,
# the new transfers test among them; resume_gpu.sh for moe-train's loop);
# seed-base steps with and without -S, interleaved, torch_ref in the same
# call; moe-train itself for 20 steps; a kernel trace.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run87.txt
{
echo "=== test_backend (all, timeout 150)"
tk 150 test_backend '*' | grep -E "cosine over|four steps|expert clip norm|\[FAIL|Assert|Synthesis" | tail -20
echo "=== resume_gpu.sh"
MOE_BIN=$B/cmd MOE_BUILDDIR=$B MOE_SRCDIR=$PWD timeout 200 sh tests/train/resume_gpu.sh >/tmp/resume.out 2>&1
echo "rc=$?"
tail -3 /tmp/resume.out
bc
bc -S
torch_seed
bc
bc -S
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
ktr ktrace-s13-call87
date -u
} 2>&1 | tee $O
