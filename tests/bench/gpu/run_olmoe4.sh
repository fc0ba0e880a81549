#!/bin/sh
# Session 4, H200 call: olmoe-1b-7b (6.92B parameters; more than 80 GB of
# state, so one H200) at seq 4096: ours at micro-batch 2 and 3, 3 with one
# stream (MOE_CUDA_OVERLAP=0), 4 and 5 with full activation recompute (-R),
# beside torch_ref --preset olmoe --modes best_c (B=2) in the same call.
set -u
. "$(dirname "$0")/common.sh"
M=share/models/olmoe-1b-7b.json
ob() {
	echo "=== ours olmoe-1b-7b B=$1 T=4096 $2 ${MOE_CUDA_OVERLAP:+MOE_CUDA_OVERLAP=$MOE_CUDA_OVERLAP}"
	timeout 150 $B/tests/bench/bench_cuda -m $M -T 4096 -B $1 -n 3 -w 1 $2 2>/tmp/o.err | tail -1
	tail -1 /tmp/o.err
}
ob 2 ""
ob 3 ""
MOE_CUDA_OVERLAP=0 ob 3 ""
ob 4 -R
ob 5 -R
echo "=== torch_ref --preset olmoe --modes best_c (B=2, T=4096)"
timeout 300 python3 $R/torch_ref.py --preset olmoe --modes best_c 2>&1 | grep -v Warning | tail -3
date -u
