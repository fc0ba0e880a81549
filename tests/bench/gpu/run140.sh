#!/bin/sh
# Session 19 (H200), call 140: the build without the superseded variants
# (0f869ee) at head size 128 (the olmoe shape's kernel instantiations):
# the same checkpoint bytes as 7326c8c's moe-train after 4 steps of
# dh128-3l.json (seed-base at hidden 1024, 8 heads of 128, 3 layers);
# olmoe-1b-7b at micro-batch 4 with both builds beside torch_ref --preset
# olmoe best_c.  Everything in $OUT/run140.txt; a summary printed last.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
old_build
{
same_bytes $R/dh128-3l.json
olmoe_step 4
echo "=== old olmoe-1b-7b B=4 T=4096"
timeout 150 /tmp/oldb/bench_cuda -m share/models/olmoe-1b-7b.json -T 4096 -B 4 -n 3 -w 2 2>/tmp/o.err | sed 's/^/(old) /' | tail -1
tail -1 /tmp/o.err
torch_olmoe
olmoe_step 4
} >$O/run140.txt 2>&1
grep -E "^=== |rc=|step_ms|same bytes|^old|^new|train|safetensors|step [0-9]" $O/run140.txt |
	sed 's/"model".*"step_ms"/"step_ms"/; s/"tflops".*"peak_gib"/"peak_gib"/; s/"shape".*"step_ms"/"step_ms"/' | tail -40
date -u
