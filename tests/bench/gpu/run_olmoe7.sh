#!/bin/sh
# Session 7, H200 call: olmoe-1b-7b (more than 80 GB of fp32 state, so one
# H200) at seq 4096 with the session-7 code (tuned cuBLASLt GEMMs, the
# deterministic default): ours at micro-batch 2 and 3 (the largest that
# fits without recompute), 3 with MOE_CUDA_GEMM_TUNE=0 and 3 with the
# one-kernel attention backward fa3f (faster than fa3 at head size 128 in
# session 6's kernel table), beside torch_ref --preset olmoe --modes
# best_c (B=2) in the same call.  Writes $OUT/run_olmoe7.txt.
set -u
. "$(dirname "$0")/common.sh"
M=share/models/olmoe-1b-7b.json
O=${OUT:-/tmp}/run_olmoe7.txt
ob() {
	echo "=== ours olmoe-1b-7b B=$1 T=4096 $2"
	timeout 150 $B/tests/bench/bench_cuda -m $M -T 4096 -B $1 -n 3 -w 1 $2 2>/tmp/o.err | grep -v "^#"
	tail -1 /tmp/o.err
}
{
ob 2 ""
ob 3 "-G"
MOE_CUDA_GEMM_TUNE=0 ob 3 ""; echo "(MOE_CUDA_GEMM_TUNE=0)"
MOE_CUDA_ATTENTION_BWD=fa3f ob 3 ""; echo "(MOE_CUDA_ATTENTION_BWD=fa3f)"
echo "=== torch_ref --preset olmoe --modes best_c (B=2, T=4096)"
timeout 300 python3 $R/torch_ref.py --preset olmoe --modes best_c 2>&1 | grep -v Warning | tail -3
ob 3 ""
date -u
} 2>&1 | tee $O
