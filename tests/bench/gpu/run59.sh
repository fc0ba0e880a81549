#!/bin/sh
# Session 10 (H100), call 59: the session's final code validated and
# measured (fa3f by ticket and the default backward, delta by rows,
# programmatic dependent launch):
#  1. both GPU test binaries whole, resume_gpu.sh;
#  2. seed-base steps interleaved: default, MOE_CUDA_PDL=0,
#     MOE_CUDA_ATTENTION_BWD=fa3 with MOE_CUDA_ATT_DELTA=heads (the
#     session-9 attention backward), torch_ref best_c in the same call;
#  3. one profiled step and one traced run (ktrace).
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run59.txt
{
echo "=== 1. both GPU test binaries, resume_gpu.sh"
suites
date -u
echo "=== 2. seed-base steps"
for k in 1 2; do
	bc
	MOE_CUDA_PDL=0 bc
	MOE_CUDA_ATTENTION_BWD=fa3 MOE_CUDA_ATT_DELTA=heads bc
	[ $k = 1 ] && torch_seed
done
bc
date -u
profile
echo "=== 3. ktrace, bench_cuda -n 3 -w 2 (default)"
CUDA_INJECTION64_PATH=$R/ktrace.so KTRACE_OUT=${OUT:-/tmp}/kt59.csv timeout 120 \
	$B/tests/bench/bench_cuda -m $M -B 16 -n 3 -w 2 2>&1 | tail -1
python3 $R/ktrace.py ${OUT:-/tmp}/kt59.csv 2>/dev/null | head -9
gzip -f ${OUT:-/tmp}/kt59.csv
date -u
} 2>&1 | tee $O
