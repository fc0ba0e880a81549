#!/bin/sh
# Session 16 (H100), call 114: the optimizer stream with AdamW below the
# main stream's priority (MOE_CUDA_OPT_STREAM=1) and at the same priority
# (=2) against one stream (packed masters in all), interleaved beside
# torch_ref best_c; then long runs (24 timed steps) of both and of
# torch_ref (--steps 24 through a copy that prints its per-step times).
# Everything in $OUT/run114.txt; a summary printed last.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
long() { # LABEL VARS
	echo "=== long $1"
	env $2 timeout 120 $B/tests/bench/bench_cuda -m $M -B 16 -n 24 -w 2 2>$O/long-$1.err | sed "s/^/($1) /"
	grep -E "^step" $O/long-$1.err | awk '{printf "%s ", $3} END {print ""}'
}
{
echo "=== steps"
bc
bc_as os1 MOE_CUDA_OPT_STREAM=1
bc_as os2 MOE_CUDA_OPT_STREAM=2
torch_seed
bc_as os1 MOE_CUDA_OPT_STREAM=1
bc_as os2 MOE_CUDA_OPT_STREAM=2
bc
bc_as os1 MOE_CUDA_OPT_STREAM=1
bc_as os2 MOE_CUDA_OPT_STREAM=2
long os1 MOE_CUDA_OPT_STREAM=1
long os2 MOE_CUDA_OPT_STREAM=2
sed 's/ts.sort()/print("per-step ms", [round(t, 2) for t in ts], flush=True); ts.sort()/' $R/torch_ref.py >$R/torch_ref_steps.py
echo "=== long torch_ref"
timeout 300 python3 $R/torch_ref_steps.py --preset seed --modes best_c --steps 24 2>&1 | grep -v Warning | tail -3
} >$O/run114.txt 2>&1
grep -E "^=== |step_ms|^[0-9. ]+$|per-step" $O/run114.txt |
	sed 's/"model".*"step_ms"/"step_ms"/; s/"tflops".*"loss"/"loss"/; s/"shape".*"step_ms"/"step_ms"/' | tail -40
date -u
