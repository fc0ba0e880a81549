#!/bin/sh
# Session 13 (H100), call 88: the router's ops in place (router_fwd_ld:
# logits read and dlogits written at the merged linear's row stride, the
# z-loss's value summed by the router's forward; MOE_CUDA_ROUTER_LD=0 the
# copies and the zloss launch).  Both GPU test binaries whole and
# resume_gpu.sh; seed-base steps with and without, interleaved, torch_ref in
# the same call; a profiled step.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run88.txt
{
suites
bc
bc_as "router copies" "MOE_CUDA_ROUTER_LD=0"
torch_seed
bc
bc_as "router copies" "MOE_CUDA_ROUTER_LD=0"
bc
profile
date -u
} 2>&1 | tee $O
