#!/bin/sh
# Session 13 (H200), call 92: olmoe-1b-7b with two warm-up steps (-w 2):
# with one, the first timed step at micro-batch 2 tunes the LM head's first
# chunk's GEMM (a shape called once a step since the head's gradient is
# stored there; at micro-batch 3 the tuning's scratch does not fit and it
# is skipped), as call 91's per-step times showed; torch_ref --preset olmoe
# in the same call.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run92.txt
steps() {
	echo "=== olmoe-1b-7b B=$1 T=4096 -w 2"
	timeout 150 $B/tests/bench/bench_cuda -m share/models/olmoe-1b-7b.json -T 4096 -B $1 -n 3 -w 2 \
		2>/tmp/o.err | tail -1
	grep "^step" /tmp/o.err
}
{
steps 3
echo "=== torch_ref --preset olmoe --modes best_c (B=2, T=4096)"
timeout 300 python3 $R/torch_ref.py --preset olmoe --modes best_c 2>&1 | grep -v Warning | tail -2
steps 2
date -u
} 2>&1 | tee $O
