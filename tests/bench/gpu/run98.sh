#!/bin/sh
# Session 14 (H200), call 98: the CUDA-CPU step comparison at head size
# 128 (backend/train_step_matches_cpu_dh128, which failed its mean-cosine
# bound in call 97) in full, with the new default forward (fa3pk128) and
# with fa3; olmoe-1b-7b steps with each forward beside torch_ref.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run98.txt
steps() {
	echo "=== olmoe-1b-7b B=$1 T=4096 -w 2 ${2:-}"
	env ${2:-X=} timeout 150 $B/tests/bench/bench_cuda -m share/models/olmoe-1b-7b.json -T 4096 -B $1 -n 3 -w 2 \
		2>/tmp/o.err | tail -1
	grep "^step" /tmp/o.err
}
{
echo "=== train_step_matches_cpu_dh128, default forward"
tk 120 test_backend 'backend/train_step_matches_cpu_dh128' | grep -v "^\[----\] *$" | tail -110
echo "=== train_step_matches_cpu_dh128, MOE_CUDA_ATTENTION_FWD=fa3"
MOE_CUDA_ATTENTION_FWD=fa3 tk 120 test_backend 'backend/train_step_matches_cpu_dh128' | grep -v "^\[----\] *$" | tail -110
steps 3
steps 3 MOE_CUDA_ATTENTION_FWD=fa3
echo "=== torch_ref --preset olmoe --modes best_c (B=2, T=4096)"
timeout 300 python3 $R/torch_ref.py --preset olmoe --modes best_c 2>&1 | grep -v Warning | tail -2
steps 3
steps 2
date -u
} 2>&1 | tee $O
