#!/bin/sh
# Session 12 (H100), call 80: the review's refactor (route_inv, the inverse
# permutation helper shared by scatter_add and the yg-free backward) and the
# test fix: both GPU test binaries whole, resume_gpu.sh, and seed-base steps
# (default, both switches off) to check that the losses and times held.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run80.txt
off() { bc_as "yg kept, router apart" "MOE_CUDA_YG=keep MOE_CUDA_ROUTER_MERGE=0"; }
{
suites
date -u
echo "=== 2. seed-base steps"
bc
off
bc
date -u
} 2>&1 | tee $O
