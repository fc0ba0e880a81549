#!/bin/sh
# Session 17 (H100), call 127, the final code (AdamW's arithmetic pinned
# to the CPU reference's roundings; the session's experiment switches
# removed): both GPU test binaries whole, resume_gpu.sh, steps beside
# torch_ref best_c and session 15's path, interleaved.  Everything in
# $OUT/run127.txt; a summary printed last.
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
torch_seed
bc
} >$O/run127.txt 2>&1
grep -E "^=== |\[FAIL|Synthesis|packed masters|optimizer stream|four steps|rc=|ok:|step_ms" $O/run127.txt |
	sed 's/"model".*"step_ms"/"step_ms"/; s/"tflops".*"loss"/"loss"/; s/"shape".*"step_ms"/"step_ms"/' | tail -40
date -u
