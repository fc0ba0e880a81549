#!/bin/sh
# Session 10 (H100), call 57: programmatic dependent launch for every
# kernel of the backend (moe_launch, MOE_PDL_ENTRY: cuda_common.h), on top
# of calls 55-56's attention changes;
#  1. both GPU test binaries whole, resume_gpu.sh;
#  2. seed-base steps interleaved: default (PDL) and MOE_CUDA_PDL=0;
#     torch_ref best_c in the same call;
#  3. one traced run (ktrace) with PDL and one without.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run57.txt
{
echo "=== 1. both GPU test binaries, resume_gpu.sh"
suites
date -u
echo "=== 2. seed-base steps"
for k in 1 2; do
	bc
	MOE_CUDA_PDL=0 bc
	[ $k = 1 ] && torch_seed
done
bc
date -u
for p in 1 0; do
	echo "=== 3. ktrace, bench_cuda -n 3 -w 2, MOE_CUDA_PDL=$p"
	MOE_CUDA_PDL=$p CUDA_INJECTION64_PATH=$R/ktrace.so KTRACE_OUT=${OUT:-/tmp}/kt57-$p.csv timeout 120 \
		$B/tests/bench/bench_cuda -m $M -B 16 -n 3 -w 2 2>&1 | tail -2
	python3 $R/ktrace.py ${OUT:-/tmp}/kt57-$p.csv | head -9
	gzip -f ${OUT:-/tmp}/kt57-$p.csv
done
date -u
} 2>&1 | tee $O
