#!/bin/sh
# Session 18 (H200), call 135: call 134's experiment build again: the AdamW
# and step tests with MOE_CUDA_SM_RESERVE=24 MOE_CUDA_ADAMW_SMS=24 (call
# 134 called them wrongly), then long runs (24 timed steps) of the
# default, one stream and AdamW held to 24 / 32 multiprocessors with the
# same reserve, interleaved.  Everything in $OUT/run135.txt.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
long() { # LABEL VARS
	env $2 timeout 120 $B/tests/bench/bench_cuda -m $M -B 16 -n 24 -w 2 2>$O/long-$1.err | sed "s/^/($1) /"
	grep -E "^step" $O/long-$1.err | awk '{printf "%s ", $3} END {print ""}'
}
{
echo "=== tests with MOE_CUDA_SM_RESERVE=24 MOE_CUDA_ADAMW_SMS=24"
(export MOE_CUDA_SM_RESERVE=24 MOE_CUDA_ADAMW_SMS=24
 tk 60 test_kernels 'kernels/adamw*' | grep -E "\[FAIL|Assert|Synthesis"
 tk 90 test_backend '*' | grep -E "\[FAIL|Assert|Synthesis")
echo "=== long runs"
for i in 1 2; do
	long def X=1
	long h24 "MOE_CUDA_SM_RESERVE=24 MOE_CUDA_ADAMW_SMS=24"
	long h32 "MOE_CUDA_SM_RESERVE=32 MOE_CUDA_ADAMW_SMS=32"
	long os0 MOE_CUDA_OPT_STREAM=0
done
} >$O/run135.txt 2>&1
grep -E "^=== |\[FAIL|Assert|Synthesis|step_ms" $O/run135.txt |
	sed 's/"model".*"step_ms"/"step_ms"/; s/"tflops".*"loss"/"loss"/' | tail -45
date -u
