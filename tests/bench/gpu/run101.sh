#!/bin/sh
# Session 14 (H100), call 101: the router's ops with a row stride in every
# backend (router_fwd, router_bwd and zloss take ld; no router_fwd_ld and
# no MOE_CUDA_ROUTER_LD): test_backend whole, the router and z-loss kernel
# tests, one seed-base step run (the same loss as call 100 expected).
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run101.txt
{
echo "=== test_backend (all, timeout 90)"
tk 90 test_backend '*' | grep -E "cosine over|four steps|router merged|\[FAIL|Assert|Synthesis" | tail -24
echo "=== test_kernels router, zloss"
tk 60 test_kernels 'kernels/router*' | grep -E "\[FAIL|Assert|Synthesis" | tail -6
tk 60 test_kernels 'kernels/zloss*' | grep -E "\[FAIL|Assert|Synthesis" | tail -6
bc
date -u
} 2>&1 | tee $O
