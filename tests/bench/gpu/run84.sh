#!/bin/sh
# Session 12 (H100), call 84: the second review (env_choice for the named
# switches, the shared experts' forward and backward as one branch with or
# without the router, swiglu_bwd_rows's shape check, qkv_packed_case on
# switch_pair): both GPU test binaries whole, resume_gpu.sh, two seed-base
# steps (the same losses as calls 78 and 80 expected: 8.7725, and 8.7808
# with both switches off).
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run84.txt
{
suites
bc
bc_as "yg kept, router apart" "MOE_CUDA_YG=keep MOE_CUDA_ROUTER_MERGE=0"
date -u
} 2>&1 | tee $O
