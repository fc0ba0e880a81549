#!/bin/sh
# Session 10 (H100), call 56: call 55's change (fa3f by ticket, the
# default) and the attention backward's delta by rows (att_delta_rows_kernel:
# one warp a token, coalesced 16-byte chunks of all heads);
#  1. the attention tests, test_backend, resume_gpu.sh;
#  2. bench_kernels -a (the backward variants, delta included);
#  3. seed-base steps interleaved: default, MOE_CUDA_ATT_DELTA=heads (the
#     previous delta), MOE_CUDA_ATTENTION_BWD=fa3 (the previous default);
#     torch_ref best_c in the same call;
#  4. one traced run (ktrace) and one profiled step.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run56.txt
{
for t in attention_fa3f attention_fa3fc attention_fa3f3 attention attention_large; do
	echo "=== 1. test_kernels $t"
	tk 120 test_kernels "kernels/$t" | grep -E "\[PASS|\[FAIL|Assert|Synthesis" | tail -6
done
echo "=== 1. test_backend (default)"
tk 90 test_backend '*' | grep -E "cosine over|four steps twice, det|\[FAIL|Assert|Synthesis" | tail -8
echo "=== 1. resume_gpu.sh"
MOE_BIN=$B/cmd MOE_BUILDDIR=$B MOE_SRCDIR=$PWD timeout 200 sh tests/train/resume_gpu.sh 2>&1 | tail -3; echo "rc=$?"
date -u
echo "=== 2. bench_kernels -a -B 16 (seed-base), default delta then heads"
timeout 60 $B/tests/bench/bench_kernels -a -B 16 2>&1 | grep -E "bwd" | grep -E "fa3 |fa3f |default"
MOE_CUDA_ATT_DELTA=heads timeout 60 $B/tests/bench/bench_kernels -a -B 16 2>&1 | grep -E "bwd" | grep -E "fa3 |fa3f |default"
date -u
echo "=== 3. seed-base steps"
for k in 1 2; do
	bc
	MOE_CUDA_ATT_DELTA=heads bc
	MOE_CUDA_ATTENTION_BWD=fa3 bc
	[ $k = 1 ] && torch_seed
done
bc
date -u
echo "=== 4. ktrace, bench_cuda -n 3 -w 2 (default)"
CUDA_INJECTION64_PATH=$R/ktrace.so KTRACE_OUT=${OUT:-/tmp}/kt56.csv timeout 120 \
	$B/tests/bench/bench_cuda -m $M -B 16 -n 3 -w 2 2>&1 | tail -2
python3 $R/ktrace.py ${OUT:-/tmp}/kt56.csv
gzip -f ${OUT:-/tmp}/kt56.csv
profile
date -u
} 2>&1 | tee $O
