#!/bin/sh
# Session 6, H200 call: olmoe-1b-7b (more than 80 GB of state, so one H200)
# at seq 4096 with the session-6 code (fa3 forward and the session-6
# defaults): ours at micro-batch 2 and 3 (the largest that fits without
# recompute), beside torch_ref --preset olmoe --modes best_c (B=2) in the
# same call; first the residual GEMM's test (its criterion was mended after
# the final H100 call) and the dh128 one-step comparison with and without
# it.  Writes $OUT/run_olmoe6.txt.
set -u
. "$(dirname "$0")/common.sh"
M=share/models/olmoe-1b-7b.json
O=${OUT:-/tmp}/run_olmoe6.txt
ob() {
	echo "=== ours olmoe-1b-7b B=$1 T=4096 $2"
	timeout 150 $B/tests/bench/bench_cuda -m $M -T 4096 -B $1 -n 3 -w 1 $2 2>/tmp/o.err | tail -1
	tail -1 /tmp/o.err
}
{
echo "=== test_kernels gemm_res"
LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 60 $B/tests/kernels/test_kernels --verbose --filter 'kernels/gemm_res' 2>&1 |
	grep -E "gemm_res|PASS|FAIL|Assert|Synthesis" | grep -v "Test is disabled"
for s in - MOE_CUDA_RESGEMM=0; do
	echo "--- test_backend dh128 ($s)"
	env ${s#-} LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 30 $B/tests/kernels/test_backend --verbose \
		--filter 'backend/train_step_matches_cpu_dh128' 2>&1 | grep -E "top-k|cosine over|routed diff|  model|Synthesis"
done
ob 2 ""
ob 3 ""
echo "=== torch_ref --preset olmoe --modes best_c (B=2, T=4096)"
timeout 300 python3 $R/torch_ref.py --preset olmoe --modes best_c 2>&1 | grep -v Warning | tail -3
date -u
} 2>&1 | tee $O
