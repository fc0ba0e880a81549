#!/bin/sh
# Session 5, the final call: every session-5 commit on one H100: both GPU
# test binaries, the default step beside torch_ref best_c,
# the session's switches turned back one at a time, a profile, moe-eval of
# a CPU-trained checkpoint on both backends (the q/k/v stride fix), and
# moe-train end to end.  Writes $OUT/run24.txt.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run24.txt
{
gpu_test test_kernels "PASS|FAIL|Synthesis" 30
gpu_test test_backend "cosine over|four steps|PASS|FAIL|Synthesis" 14
bc
torch_seed
bc
# the session's attention defaults turned back (fa3 forward, then both)
MOE_CUDA_ATTENTION_FWD=wg1 bc; echo "(MOE_CUDA_ATTENTION_FWD=wg1)"
MOE_CUDA_ATTENTION_FWD=wg1 MOE_CUDA_ATTENTION_BWD=wgeg bc; echo "(MOE_CUDA_ATTENTION_FWD=wg1 MOE_CUDA_ATTENTION_BWD=wgeg: session 4's)"
# bench_cuda trains on one batch: the loss after 7 steps moves with any
# change of rounding; v1's (mma.sync) shows how far another forward's goes
MOE_CUDA_ATTENTION_FWD=v1 bc -n 4 -w 1; echo "(MOE_CUDA_ATTENTION_FWD=v1, 4 steps after 1)"
MOE_CUDA_ATTENTION_FWD=wg1 bc -n 4 -w 1; echo "(MOE_CUDA_ATTENTION_FWD=wg1, 4 steps after 1)"
bc -n 4 -w 1; echo "(default, 4 steps after 1)"
profile
echo "=== moe-eval of a CPU-trained tiny checkpoint (300 steps, demo shards), whole val split"
for d in cpu cuda; do
	printf '%-5s ' $d
	$B/cmd/moe-eval $R/ck/step-0000300 --data $R/shards --device $d 2>&1 | tr -d '\n ' |
		sed 's/.*"loss":\([^,]*\),"ppl":[^,]*,"ce":\([^,]*\),"aux":\([^,]*\),"z":\([^,]*\),.*"tokens":\([^,]*\),"batches":\([^,]*\),.*/loss \1 ce \2 aux \3 z \4 tokens \5 batches \6/'
	echo
done
$B/tests/train/mkdata /tmp/syn 60000 3 >/dev/null
mt() { # moe-train end to end: 30 steps of seed-base B=16 on synthetic shards
	echo "=== moe-train end to end (synthetic shards, 20 steps, seed-base B=16) $2"
	rm -rf /tmp/run
	timeout 120 $B/cmd/moe-train -m $1 -d /tmp/syn -o /tmp/run --steps 20 --micro-batch 16 --seq-len 2048 \
		--eval-every 0 --ckpt-every 0 -q 2>&1 | tail -3
	python3 - <<'PY'
import json, statistics
r=[json.loads(l) for l in open('/tmp/run/metrics.jsonl') if '"tokens_per_s"' in l]
t=[x['tokens_per_s'] for x in r][5:]
print("moe-train steps 6-20: median tokens/s %.0f (min %.0f, max %.0f), last loss %.4f, mfu %s, device_mem %s" % (statistics.median(t), min(t), max(t), r[-1].get('loss', float('nan')), r[-1].get('mfu'), r[-1].get('device_mem_bytes')))
PY
}
mt $M ""
# the same without the balancing-bias update (bench_cuda does not run it):
# its per-layer read-backs are the trainer's main host work per step
python3 -c "import json; c = json.load(open('$M')); c['loss_free_balancing'] = False; json.dump(c, open('/tmp/sb-nobal.json', 'w'))"
mt /tmp/sb-nobal.json "(loss_free_balancing false)"
date -u
} 2>&1 | tee $O
