#!/bin/sh
# Session 11 (H100), call 72: the review's refactor (no behaviour change
# meant): both GPU test binaries whole, resume_gpu.sh, two seed-base steps
# and one with the split QK-norm kernels on the packed rows (qk_contig).
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run72.txt
{
tk 120 test_backend 'backend/qkv_packed_matches_batched' | grep -E "packed vs|\[FAIL|Assert|Synthesis" | tail -6
suites
bc
bc_as "split QK-norm kernels" "MOE_CUDA_QKNORM_ROPE=split"
bc
date -u
} 2>&1 | tee $O
