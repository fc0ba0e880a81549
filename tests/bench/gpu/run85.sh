#!/bin/sh
# Session 13 (H100), call 85: exploration with the code of 366a6d3 (no
# torch_ref): the LM head's logits chunk (-L 8192, 16384 against the
# default 4096 rows) and cuBLASLt without a workspace (MOE_CUDA_GEMM_WS=0:
# do the 4-byte memsets before its kernels go, and what do its algorithms
# cost), interleaved; a kernel trace with no workspace; both plans tables.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run85.txt
{
bc
bc -L 8192
bc -L 16384
bc_as "ws 0" "MOE_CUDA_GEMM_WS=0"
bc_as "ws 0, -L 8192" "MOE_CUDA_GEMM_WS=0" -L 8192
bc
bc -L 8192
bc_as "ws 0" "MOE_CUDA_GEMM_WS=0"
ktr ktrace-ws0 MOE_CUDA_GEMM_WS=0
echo "=== plans default"; plans
echo "=== plans ws 0"; plans MOE_CUDA_GEMM_WS=0
date -u
} 2>&1 | tee $O
