#!/bin/sh
# Session 19 (an H200: no H100 lent), call 139: the build with the
# superseded attention and grouped-GEMM variants removed.  Both GPU test
# binaries whole, resume_gpu.sh, the model against transformers; the same
# checkpoint bytes as session 18's build (7326c8c, oldb.tgz: its moe-train
# and bench_cuda) after 4 steps of seed-base cut to 3 layers (seed-3l.json:
# Dh 96, 64 experts, so the default kernels: fa3pk128, fa3f, the TMA
# grouped GEMMs); seed-base steps of both builds beside torch_ref best_c,
# interleaved.  Everything in $OUT/run139.txt; a summary printed last.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
tar xzf $R/oldb.tgz -C /tmp
chmod +x /tmp/oldb/*
{
suites
echo "=== tests/model/parity.sh"
MOE_BUILDDIR=$B MOE_SRCDIR=$PWD timeout 120 sh tests/model/parity.sh >/tmp/parity.out 2>&1
echo "rc=$?"
grep -v "Warning\|warn" /tmp/parity.out | tail -8
echo "=== same bytes: seed-3l, 4 steps, micro-batch 4, seq 2048"
$B/tests/train/mkdata /tmp/d 4000 >/dev/null
for v in old new; do
	bin=$B/cmd/moe-train
	[ $v = old ] && bin=/tmp/oldb/moe-train
	timeout 200 $bin --model $R/seed-3l.json --data /tmp/d --device cuda --micro-batch 4 --seq-len 2048 \
		--steps 4 --warmup 1 --ckpt-every 4 --eval-every 4 -q --out /tmp/run-$v 2>&1 | tail -3
	echo "$v rc=$?"
	sed -n 's/^{"step":\([0-9]*\),"split":"\([a-z]*\)".*"loss":\([^,]*\),.*/\1 \2 \3/p' /tmp/run-$v/metrics.jsonl |
		tr '\n' ' '
	echo
	(cd /tmp/run-$v/ckpt/step-0000004 && sha256sum *.safetensors)
done
for f in model optimizer; do
	cmp /tmp/run-old/ckpt/step-0000004/$f.safetensors /tmp/run-new/ckpt/step-0000004/$f.safetensors &&
		echo "same bytes: $f.safetensors"
done
echo "=== steps (new, old, torch_ref)"
bc
bc_old
torch_seed
bc
bc_old
torch_seed
bc
} >$O/run139.txt 2>&1
grep -E "^=== |\[FAIL|Assert|Synthesis|packed masters|optimizer stream|rc=|ok:|step_ms|parity|max|same bytes|^old|^new|train|safetensors" $O/run139.txt |
	sed 's/"model".*"step_ms"/"step_ms"/; s/"tflops".*"peak_gib"/"peak_gib"/; s/"shape".*"step_ms"/"step_ms"/' | tail -60
date -u
