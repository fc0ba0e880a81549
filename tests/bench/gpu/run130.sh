#!/bin/sh
# Session 18 (an H200: no H100 is lent this session), call 130, the code as
# of 09bd538 (session 17's last two commits were never run on a card): both
# GPU test binaries whole, resume_gpu.sh, the model against transformers
# (tests/model/parity.sh), seed-base steps beside torch_ref best_c, session
# 15's path and the optimizer stream off, interleaved; a trace of the final
# code.  Everything in $OUT/run130.txt; a summary printed last.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
S15="MOE_CUDA_PACKED_MASTERS=0 MOE_CUDA_OPT_STREAM=0"
{
suites
echo "=== tests/model/parity.sh"
MOE_BUILDDIR=$B MOE_SRCDIR=$PWD timeout 120 sh tests/model/parity.sh >/tmp/parity.out 2>&1
echo "rc=$?"
grep -v "Warning\|warn" /tmp/parity.out | tail -8
echo "=== steps"
bc
torch_seed
bc
bc_as os0 MOE_CUDA_OPT_STREAM=0
bc_as s15 "$S15"
torch_seed
bc
echo "=== trace"
ktr k130-final
} >$O/run130.txt 2>&1
grep -E "^=== |\[FAIL|Assert|Synthesis|packed masters|optimizer stream|rc=|ok:|step_ms|parity|max|steps in trace" $O/run130.txt |
	sed 's/"model".*"step_ms"/"step_ms"/; s/"tflops".*"peak_gib"/"peak_gib"/; s/"shape".*"step_ms"/"step_ms"/' | tail -45
date -u
