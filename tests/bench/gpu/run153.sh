#!/bin/sh
# Session 21 (H200), call 153: why the clustered TMA GEMMs (call 152) ran
# 38-50% slower: the clusters and grid they got (MOE_CUDA_TMA_DIAG), the
# same clusters without sharing W's tile (MOE_CUDA_TMA_MC=0), forced grids.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
for v in "X=" "MOE_CUDA_TMA_MC=0" "MOE_CUDA_TMA_GRID=132" "MOE_CUDA_TMA_GRID=120" "MOE_CUDA_TMA_GRID=66" "MOE_CUDA_TMA_MC=0 MOE_CUDA_TMA_GRID=66"; do
	echo "=== bench_kernels -t -B 16 $v"
	env MOE_CUDA_TMA_DIAG=1 $v timeout 60 $B/tests/bench/bench_kernels -t -B 16 2>&1 | sed '/^attention/q' |
		grep -E "DIAG|tma (fwd|dgrad) .*cfg [0-4]|dense"
done
} >$O/run153.txt 2>&1
cat $O/run153.txt
date -u
