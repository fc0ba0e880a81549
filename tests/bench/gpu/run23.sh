#!/bin/sh
# Session 5, call 2: moe-eval of one CPU-trained tiny checkpoint (300 steps on
# the demo shards, made on the CPU machine) on cpu and cuda, with each
# kernel family switched back, to find which part of the CUDA forward moved
# the evaluation loss between session 3 (equal to 3e-6) and now (0.5%).
set -u
. "$(dirname "$0")/common.sh"
CK=$R/ck/step-0000300
ev() {
	printf '%-44s ' "$*"
	env "$@" $B/cmd/moe-eval $CK --data $R/shards $EVARGS 2>&1 | tr -d '\n ' |
		sed 's/.*"loss":\([^,]*\),"ppl":[^,]*,"ce":\([^,]*\),"aux":\([^,]*\),"z":\([^,]*\),.*"tokens":\([^,]*\),"batches":\([^,]*\),.*"backend":"\([a-z]*\)".*/loss \1 ce \2 aux \3 z \4 tok \5 nb \6 \7/'
	echo
}
for EVARGS in "--device cpu" "--device cuda"; do ev X=1; done
EVARGS="--device cuda"
ev MOE_CUDA_MEMK=legacy
ev MOE_CUDA_QKNORM_ROPE=split
ev MOE_CUDA_ATTENTION_FWD=v1
ev MOE_CUDA_ATTENTION_FWD=wg
ev MOE_CUDA_QKV=split
ev MOE_CUDA_NARROW=cublas
ev MOE_CUDA_GROUPED=wgmma
ev MOE_CUDA_GROUPED=kernel
ev MOE_CUDA_GRAD_OVERWRITE=0
for EVARGS in "--device cpu -n 1" "--device cuda -n 1" "--device cpu -n 1 -b 1" "--device cuda -n 1 -b 1" "--device cpu -n 3" "--device cuda -n 3"; do ev X=1; done
date -u
