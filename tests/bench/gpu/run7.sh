#!/bin/sh
# Fused QK-norm + RoPE: correctness, then seed-base B=16 beside torch_ref.
set -u
. "$(dirname "$0")/common.sh"
gpu_test test_kernels "Synthesis|FAIL" 6
gpu_test test_backend "expert GEMMs|cosine over|PASS|FAIL|Synthesis" 8
bc
torch_seed
bc
profile "qknorm|rope|rmsnorm|total|wall"
date -u
