#!/bin/sh
# Session 7, the final H100 call, binaries of a clean checkout of main:
# both GPU test binaries whole; the default step beside torch_ref best_c
# and the session's switches interleaved (MOE_CUDA_GEMM_TUNE=0, text-like
# ids with and without the deterministic mode, -L 8192, MOE_CUDA_QKV=split);
# a profile; moe-eval of a CPU-trained checkpoint on both backends; the tiny
# preset's 300-step CUDA curve; moe-train end to end on synthetic shards
# and on real text (State of the Union addresses, OLMo tokenizer, 2.07M
# tokens), seed-base micro-batch 16.  Writes $OUT/run36.txt.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run36.txt
mt() { # moe-train seed-base B=16 on shards $1, $2 steps, metrics summary
	rm -rf /tmp/run
	timeout 150 $B/cmd/moe-train -m $M -d $1 -o /tmp/run --steps $2 --micro-batch 16 --seq-len 2048 \
		--eval-every 0 --ckpt-every 0 -q 2>&1 | tail -3
	python3 - <<'PY'
import json, statistics
r=[json.loads(l) for l in open('/tmp/run/metrics.jsonl') if '"tokens_per_s"' in l]
t=[x['tokens_per_s'] for x in r][5:]
print("moe-train steps 6-%d: median tokens/s %.0f (min %.0f, max %.0f), first loss %.4f, last loss %.4f, mfu %s, device_mem %s" % (len(r), statistics.median(t), min(t), max(t), r[0].get('loss', float('nan')), r[-1].get('loss', float('nan')), r[-1].get('mfu'), r[-1].get('device_mem_bytes')))
PY
}
{
echo "=== test_kernels (all, timeout 200)"
tk 200 test_kernels '*' | grep -E "\[PASS|\[FAIL|Assert|Synthesis|tuned|differ" | tail -60
echo "=== test_backend (all, timeout 90)"
tk 90 test_backend '*' | grep -E "cosine over|top-k choices|four steps|\[PASS|\[FAIL|Assert|Synthesis" | tail -40
echo "=== steps"
bc
torch_seed
bc
MOE_CUDA_GEMM_TUNE=0 bc; echo "(MOE_CUDA_GEMM_TUNE=0)"
bc -Z; echo "(-Z)"
MOE_CUDA_DETERMINISTIC=0 bc -Z; echo "(-Z, MOE_CUDA_DETERMINISTIC=0)"
bc -L 8192; echo "(-L 8192)"
MOE_CUDA_QKV=split bc; echo "(MOE_CUDA_QKV=split)"
bc
profile
echo "=== moe-eval of a CPU-trained tiny checkpoint (300 steps, demo shards), whole val split"
for d in cpu cuda; do
	printf '%-5s ' $d
	$B/cmd/moe-eval $R/ck --data $R/shards --device $d 2>&1 | tr -d '\n ' |
		sed 's/.*"loss":\([^,]*\),"ppl":[^,]*,"ce":\([^,]*\),"aux":\([^,]*\),"z":\([^,]*\),.*"tokens":\([^,]*\),"batches":\([^,]*\),.*/loss \1 ce \2 aux \3 z \4 tokens \5 batches \6/'
	echo
done
echo "=== tiny preset, 300 steps on the demo shards, CUDA (metrics to \$OUT/curve-cuda.jsonl)"
rm -rf /tmp/cur
timeout 90 $B/cmd/moe-train --model tiny --data $R/shards --steps 300 --micro-batch 8 --seq-len 128 --warmup 5 \
	--lr 3e-3 --eval-every 50 --eval-batches 8 -q --device cuda --out /tmp/cur 2>&1 | tail -2
cp /tmp/cur/metrics.jsonl ${OUT:-/tmp}/curve-cuda.jsonl 2>/dev/null
$B/tests/train/mkdata /tmp/syn 60000 3 >/dev/null
echo "=== moe-train end to end (synthetic shards, 20 steps, seed-base B=16)"
mt /tmp/syn 20
echo "=== moe-train on real text (sotu.jsonl, OLMo tokenizer, 2.07M tokens; 40 steps, seed-base B=16)"
mt $R/sotu 40
date -u
} 2>&1 | tee $O
