#!/bin/sh
# Session 18 (H200), call 137: the final code (09bd538's kernels) beside
# torch_ref best_c on a second H200, interleaved.  Everything in
# $OUT/run137.txt; a summary printed last.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
bc
torch_seed
bc
torch_seed
bc
} >$O/run137.txt 2>&1
grep -E "^=== |step_ms" $O/run137.txt |
	sed 's/"model".*"step_ms"/"step_ms"/; s/"tflops".*"peak_gib"/"peak_gib"/; s/"shape".*"step_ms"/"step_ms"/'
date -u
