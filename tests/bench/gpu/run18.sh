#!/bin/sh
# Session 4, call 2: the optimizer stream at the lowest priority (the main
# stream at the highest) and AdamW in short blocks: test_backend, the AdamW
# kernel tests, the step with and without the stream, interleaved, and the
# per-op profile (one stream).
set -u
. "$(dirname "$0")/common.sh"
gpu_test test_backend "optimizer stream|PASS|FAIL|Synthesis" 10
echo "=== test_kernels --filter 'kernels/adamw*'"
LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 100 $B/tests/kernels/test_kernels --filter 'kernels/adamw*' 2>&1 | tail -3
for i in 1 2; do
	bc
	MOE_CUDA_OVERLAP=0 bc; echo "(MOE_CUDA_OVERLAP=0)"
done
profile
date -u
