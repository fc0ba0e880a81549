#!/bin/sh
# Session 6, the final H100 call, binaries of a clean checkout of main:
# the new persistent forward's smoke test (alone: a hang stops only it),
# test_backend, the default step beside torch_ref best_c, each session-6
# change turned back by its switch (interleaved), test_kernels, the
# dh128 one-step comparison under the switches, a profile, moe-eval of a
# CPU-trained checkpoint on both backends, the tiny preset's 300-step
# CUDA curve (the CPU curve is made on the CPU machine), moe-train end to
# end, and the forward kernel table.  Writes $OUT/run25.txt.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run25.txt
sw() { # bench_cuda with a switch (an env assignment or - for none) and bench options
	s=$1; shift
	env ${s#-} $B/tests/bench/bench_cuda -m $M -B 16 -n 6 -w 2 "$@" 2>/tmp/bc.err | tail -1
	printf '   (%s %s) ' "$s" "$*"; tail -1 /tmp/bc.err
}
{
echo "=== attention_fa3p_fwd alone (timeout 40)"
tk 40 test_kernels 'kernels/attention_fa3p_fwd' >/tmp/fa3p.log
FA3P=bad
grep -q "Tested: 1 | Passing: 1 | Failing: 0" /tmp/fa3p.log && FA3P=ok
grep -E "PASS|FAIL|Synthesis|Assert|vs fa3" /tmp/fa3p.log | tail -8
echo "fa3p: $FA3P"
echo "=== test_backend (all, timeout 90)"
tk 90 test_backend '*' | grep -E "cosine over|top-k choices|four steps|\[PASS|\[FAIL|Assert|  model|Synthesis" | tail -40
echo "=== steps"
bc
torch_seed
bc
for s in MOE_CUDA_RESGEMM=0 MOE_CUDA_GRAD_CLEAR=0 MOE_CUDA_ROUTE=legacy MOE_CUDA_SUMSQ_EPI=0 -; do sw $s; done
[ $FA3P = ok ] && { sw MOE_CUDA_ATTENTION_FWD=fa3p; sw -; sw MOE_CUDA_ATTENTION_FWD=fa3p; }
sw - -L 8192
sw - -L 16384
echo "=== test_kernels (all$([ $FA3P = ok ] || echo ", without the attention tables"), timeout 180)"
if [ $FA3P = ok ]; then tk 180 test_kernels '*'; else tk 180 test_kernels 'kernels/!(attention|attention_large|attention_fa3p*)'; fi |
	grep -E "\[PASS|\[FAIL|Assert|Synthesis" | tail -60
echo "=== dh128 one-step comparison under the switches"
for s in MOE_CUDA_ROUTE=legacy MOE_CUDA_RESGEMM=0 "MOE_CUDA_ROUTE=legacy MOE_CUDA_RESGEMM=0"; do
	echo "--- $s"
	env $s LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 30 $B/tests/kernels/test_backend --verbose \
		--filter 'backend/train_step_matches_cpu_dh128' 2>&1 | grep -E "top-k|cosine over|  model|Synthesis"
done
profile
echo "=== moe-eval of a CPU-trained tiny checkpoint (300 steps, demo shards), whole val split"
for d in cpu cuda; do
	printf '%-5s ' $d
	$B/cmd/moe-eval $R/ck/step-0000300 --data $R/shards --device $d 2>&1 | tr -d '\n ' |
		sed 's/.*"loss":\([^,]*\),"ppl":[^,]*,"ce":\([^,]*\),"aux":\([^,]*\),"z":\([^,]*\),.*"tokens":\([^,]*\),"batches":\([^,]*\),.*/loss \1 ce \2 aux \3 z \4 tokens \5 batches \6/'
	echo
done
echo "=== tiny preset, 300 steps on the demo shards, CUDA (metrics to \$OUT/curve-cuda.jsonl)"
rm -rf /tmp/cur
s0=$(date +%s)
timeout 90 $B/cmd/moe-train --model tiny --data $R/shards --steps 300 --micro-batch 8 --seq-len 128 --warmup 5 \
	--lr 3e-3 --eval-every 50 --eval-batches 8 -q --device cuda --out /tmp/cur 2>&1 | tail -2
cp /tmp/cur/metrics.jsonl ${OUT:-/tmp}/curve-cuda.jsonl 2>/dev/null; echo "($(($(date +%s) - s0)) s)"
$B/tests/train/mkdata /tmp/syn 60000 3 >/dev/null
echo "=== moe-train end to end (synthetic shards, 20 steps, seed-base B=16)"
rm -rf /tmp/run
timeout 120 $B/cmd/moe-train -m $M -d /tmp/syn -o /tmp/run --steps 20 --micro-batch 16 --seq-len 2048 \
	--eval-every 0 --ckpt-every 0 -q 2>&1 | tail -3
python3 - <<'PY'
import json, statistics
r=[json.loads(l) for l in open('/tmp/run/metrics.jsonl') if '"tokens_per_s"' in l]
t=[x['tokens_per_s'] for x in r][5:]
print("moe-train steps 6-20: median tokens/s %.0f (min %.0f, max %.0f), last loss %.4f, mfu %s, device_mem %s" % (statistics.median(t), min(t), max(t), r[-1].get('loss', float('nan')), r[-1].get('mfu'), r[-1].get('device_mem_bytes')))
PY
if [ $FA3P = ok ]; then
	echo "=== bench_kernels -a -B 16 (forward variants; timeout 60)"
	timeout 60 $B/tests/bench/bench_kernels -a -B 16 2>&1 | grep -E "attention" | tail -40
fi
date -u
} 2>&1 | tee $O
