#!/bin/sh
# Prepared at the end of session 6, NOT YET RUN: the first call of the next
# session, for what session 6 committed after its last device call.
#   1. both GPU test binaries whole (gemm_res's final criterion, the
#      deterministic default, the embedding backward's loop change, the
#      attention helpers moved to headers with unchanged PTX);
#   2. the step on text-like ids (bench_cuda -Z: Zipf frequencies), the
#      deterministic default against MOE_CUDA_DETERMINISTIC=0, interleaved,
#      and a profile of each (embedding_bwd's row);
#   3. the default step beside torch_ref, and fa3pk128 as a forward step.
# Writes $OUT/run29.txt.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run29.txt
{
gpu_test test_kernels "PASS|FAIL|Synthesis" 45
gpu_test test_backend "four steps|cosine over|PASS|FAIL|Synthesis" 30
for d in 1 0 1 0; do
	MOE_CUDA_DETERMINISTIC=$d bc -Z; echo "(-Z, MOE_CUDA_DETERMINISTIC=$d)"
done
for d in 1 0; do
	echo "=== profile -Z, MOE_CUDA_DETERMINISTIC=$d"
	MOE_CUDA_DETERMINISTIC=$d timeout 100 $B/tests/bench/bench_cuda -m $M -B 16 -n 1 -w 2 -p -Z 2>/dev/null |
		grep -E "embedding|rmsnorm_bwd|qknorm_rope_bwd|total"
done
bc
torch_seed
bc
MOE_CUDA_ATTENTION_FWD=fa3pk128 bc; echo "(MOE_CUDA_ATTENTION_FWD=fa3pk128)"
MOE_CUDA_ATTENTION_FWD=fa3p bc; echo "(MOE_CUDA_ATTENTION_FWD=fa3p)"
bc
date -u
} 2>&1 | tee $O
