#!/bin/sh
# Session 3, call 2: the lead's AdamW / sumsq / QK-norm changes on a GPU
# (test_kernels, test_backend), the step with and without them, the step
# with clipping active, a profile, and moe-train end to end on synthetic
# shards (its own tokens/s, beside bench_cuda's).
set -u
R=$PWD/${RUNDIR:-.devrun}
export MOE_DATADIR=$PWD/share NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
B=$R/b
chmod +x $B/cmd/* $B/tests/*/*
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; date -u
echo "=== test_kernels"; LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 150 $B/tests/kernels/test_kernels 2>&1 | grep -v "^\[----\]" | tail -8
echo "=== test_backend"; LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 150 $B/tests/kernels/test_backend --verbose 2>&1 | grep -E "expert GEMMs|cosine over|overwrite|fused|PASS|FAIL|Synthesis" | tail -12
export LD_LIBRARY_PATH=$R/lib
M=share/models/seed-base.json
bc() { echo "--- bench_cuda $*"; timeout 120 $B/tests/bench/bench_cuda -m $M -B 16 -n 6 -w 2 "$@" 2>/tmp/bc.err; tail -1 /tmp/bc.err; }
bc
MOE_CUDA_ADAMW=scalar bc
bc -c 0.01
bc
echo "=== profile B=16"; timeout 100 $B/tests/bench/bench_cuda -m $M -B 16 -n 1 -w 2 -p 2>/dev/null | tail -n +2
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
