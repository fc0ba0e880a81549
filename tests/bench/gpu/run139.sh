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
{
suites
echo "=== tests/model/parity.sh"
MOE_BUILDDIR=$B MOE_SRCDIR=$PWD timeout 120 sh tests/model/parity.sh >/tmp/parity.out 2>&1
echo "rc=$?"
grep -v "Warning\|warn" /tmp/parity.out | tail -8
same_bytes $R/seed-3l.json
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
