#!/bin/sh
# Session 3, call 8: the final code (the ex2.approx attention backward 'wge'
# and the shared wgmma.cuh in the TMA kernel): test_kernels, test_backend, the
# step beside torch_ref best_c.
set -u
. "$(dirname "$0")/common.sh"
gpu_test test_kernels "Synthesis|FAIL" 6
gpu_test test_backend "cosine over|PASS|FAIL|Synthesis" 8
bc
torch_seed
bc
date -u
