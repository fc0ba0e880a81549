#!/bin/sh
# Session 17 (H100), call 128, the final code (d9a026a): long runs (24
# timed steps) of the final defaults, of session 15's path
# (MOE_CUDA_PACKED_MASTERS=0 MOE_CUDA_OPT_STREAM=0) and of torch_ref
# (--steps 24, per-step times printed); a kernel trace of the final code.
# Everything in $OUT/run128.txt; a summary printed last.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
long() { # LABEL VARS
	echo "=== long $1"
	env $2 timeout 120 $B/tests/bench/bench_cuda -m $M -B 16 -n 24 -w 2 2>$O/long-$1.err | sed "s/^/($1) /"
	grep -E "^step" $O/long-$1.err | awk '{printf "%s ", $3} END {print ""}'
}
{
long final X=0
long s15 "MOE_CUDA_PACKED_MASTERS=0 MOE_CUDA_OPT_STREAM=0"
sed 's/ts.sort()/print("per-step ms", [round(t, 2) for t in ts], flush=True); ts.sort()/' $R/torch_ref.py >$R/torch_ref_steps.py
echo "=== long torch_ref"
timeout 300 python3 $R/torch_ref_steps.py --preset seed --modes best_c --steps 24 2>&1 | grep -v Warning | tail -3
long final2 X=0
echo "=== trace"
ktr k128-final X=0
} >$O/run128.txt 2>&1
grep -E "^=== |step_ms|busy" $O/run128.txt |
	sed 's/"model".*"step_ms"/"step_ms"/; s/"tflops".*"loss"/"loss"/; s/"shape".*"step_ms"/"step_ms"/' | tail -30
date -u
