#!/bin/sh
# Session 16 (H100), call 118: the grouped expert GEMMs' persistent grid
# N SMs short while AdamW spans are pending on the optimizer stream
# (MOE_CUDA_OPT_LEAVE=N, an experiment), so that AdamW runs beside the
# forward's expert GEMMs; N = 0 (the final code), 8, 16, 24, interleaved
# twice, beside torch_ref best_c.  Everything in $OUT/run118.txt; a summary
# printed last.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
for r in 1 2; do
	bc
	bc_as leave8 MOE_CUDA_OPT_LEAVE=8
	bc_as leave16 MOE_CUDA_OPT_LEAVE=16
	bc_as leave24 MOE_CUDA_OPT_LEAVE=24
	[ $r = 1 ] && torch_seed
done
bc
} >$O/run118.txt 2>&1
grep -E "^=== |step_ms" $O/run118.txt |
	sed 's/"model".*"step_ms"/"step_ms"/; s/"tflops".*"loss"/"loss"/; s/"shape".*"step_ms"/"step_ms"/' | tail -30
date -u
