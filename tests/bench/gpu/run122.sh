#!/bin/sh
# Session 17 (H100), call 122: where the forward's time goes beside AdamW
# on its stream: kernel traces with and without programmatic dependent
# launch (MOE_CUDA_PDL=0 gives each kernel's own duration), of the default
# and of one stream (session 15's path); steps with PDL off, interleaved.
# Everything in $OUT/run122.txt, traces in $OUT; a summary printed last.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
S='s/"model".*"step_ms"/"step_ms"/; s/"tflops".*"loss"/"loss"/'
{
bc_as base X=0
bc_as pdl0 MOE_CUDA_PDL=0
echo "=== trace base"; ktr k122-base X=0
echo "=== trace pdl0"; ktr k122-pdl0 MOE_CUDA_PDL=0
echo "=== trace onestream pdl0"; ktr k122-one-pdl0 "MOE_CUDA_OPT_STREAM=0" MOE_CUDA_PDL=0
bc_as base X=0
bc_as pdl0 MOE_CUDA_PDL=0
} >$O/run122.txt 2>&1
grep -E "step_ms|^=== |span" $O/run122.txt | sed "$S" | tail -20
date -u
