#!/bin/sh
# Session 16 (H100), call 115, the final code: both GPU test binaries whole,
# resume_gpu.sh, then steps of the final defaults (packed masters, the
# optimizer stream) and of session 15's path (MOE_CUDA_PACKED_MASTERS=0
# MOE_CUDA_OPT_STREAM=0: the same bits) interleaved beside torch_ref best_c
# twice.  Everything in $OUT/run115.txt; a summary printed last.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
S15="MOE_CUDA_PACKED_MASTERS=0 MOE_CUDA_OPT_STREAM=0"
{
suites
echo "=== steps"
bc
bc_as s15 "$S15"
torch_seed
bc
bc_as s15 "$S15"
bc
torch_seed
bc
} >$O/run115.txt 2>&1
grep -E "^=== |\[FAIL|Synthesis|packed masters|optimizer stream|four steps|rc=|ok:|step_ms" $O/run115.txt |
	sed 's/"model".*"step_ms"/"step_ms"/; s/"tflops".*"loss"/"loss"/; s/"shape".*"step_ms"/"step_ms"/' | tail -40
date -u
