#!/bin/sh
# Session 14 (H100), call 99: the final code (fa3pk128 the default forward;
# the CUDA-CPU step tests' mean-cosine bound over the tensors both backends
# computed from the same tokens): test_backend whole, the forward's tests,
# seed-base steps beside torch_ref and session 13's forward.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run99.txt
{
echo "=== test_backend (all, timeout 90)"
tk 90 test_backend '*' | grep -E "cosine over|four steps|\[FAIL|Assert|Synthesis" | tail -24
echo "=== test_kernels attention (timeout 200)"
tk 200 test_kernels 'kernels/attention*' | grep -E "\[FAIL|Assert|Synthesis" | tail -8
bc
torch_seed
bc
bc_as "fa3 forward (session 13's default)" "MOE_CUDA_ATTENTION_FWD=fa3"
bc
date -u
} 2>&1 | tee $O
