#!/bin/sh
# Session 16 (H100), call 111: the cuBLASLt plans tuned again once the card
# runs at its power limit (MOE_CUDA_GEMM_RETUNE=9: the candidates timed in
# the 9th step, about 1.4 s into the load, instead of the first two).
# Each run: 10 warm-up steps, 8 timed, plans printed (-G); the two kinds
# interleaved twice; torch_ref best_c in the same call.  Everything in
# $OUT/run111.txt; a summary printed last.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
run() { # LABEL VARS
	echo "=== $1"
	env $2 timeout 150 $B/tests/bench/bench_cuda -m $M -B 16 -n 8 -w 10 -G 2>$O/$1.err
	grep -E "^step" $O/$1.err | awk '{printf "%s ", $3} END {print ""}'
}
{
run a1 X=
run b1 MOE_CUDA_GEMM_RETUNE=9
run a2 X=
run b2 MOE_CUDA_GEMM_RETUNE=9
torch_seed
} >$O/run111.txt 2>&1
grep -E "^=== |step_ms|tok_per_s|^[0-9. ]+$" $O/run111.txt | sed 's/"model".*"step_ms"/"step_ms"/; s/"tflops".*//' | tail -40
date -u
