#!/bin/sh
# Session 16 (H100), call 119: MOE_CUDA_OPT_LEAVE=8 again (the experiment
# build of call 118 on 5a30650), in long runs (24 timed steps) interleaved
# with the final code, and 12 once, beside a long torch_ref run.
# Everything in $OUT/run119.txt; a summary printed last.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
long() { # LABEL VARS
	echo "=== long $1"
	env $2 timeout 120 $B/tests/bench/bench_cuda -m $M -B 16 -n 24 -w 2 2>$O/long-$1.err | sed "s/^/($1) /"
}
{
long final1 X=0
long leave8a MOE_CUDA_OPT_LEAVE=8
long final2 X=0
long leave8b MOE_CUDA_OPT_LEAVE=8
long leave12 MOE_CUDA_OPT_LEAVE=12
long final3 X=0
long leave8c MOE_CUDA_OPT_LEAVE=8
sed 's/ts.sort()/print("per-step ms", [round(t, 2) for t in ts], flush=True); ts.sort()/' $R/torch_ref.py >$R/torch_ref_steps.py
echo "=== long torch_ref"
timeout 300 python3 $R/torch_ref_steps.py --preset seed --modes best_c --steps 24 2>&1 | grep -v Warning | tail -2
} >$O/run119.txt 2>&1
grep -E "^=== |step_ms" $O/run119.txt |
	sed 's/"model".*"step_ms"/"step_ms"/; s/"tflops".*"loss"/"loss"/; s/"shape".*"step_ms"/"step_ms"/' | tail -30
date -u
