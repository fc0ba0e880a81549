#!/bin/sh
# Session 6, after run27: the deterministic mode (MOE_CUDA_DETERMINISTIC=1:
# the norms' weight gradients and the embedding's without fp32 atomics):
# its kernel tests, training_steps_repeatable five times (bit-identical
# runs asserted in that mode, the default mode's difference reported),
# test_backend whole, and the step with and without the mode.
set -u
R=$PWD/${RUNDIR:-.devrun28}
B=$R/b
export LD_LIBRARY_PATH=$R/lib:$R/libtest NCCL_NVLS_ENABLE=0 MOE_DATADIR=$PWD/share
nvidia-smi --query-gpu=name --format=csv,noheader
echo "=== test_kernels embedding, rmsnorm, qknorm_rope"
timeout 60 $B/tests/kernels/test_kernels --verbose --filter 'kernels/@(embedding|rmsnorm|qknorm_rope)' 2>&1 |
	grep -E "deterministic|block order|\[PASS|\[FAIL|Assert|  [a-z].*differ|Synthesis" | grep -v disabled
for i in 1 2 3 4 5; do
	timeout 40 $B/tests/kernels/test_backend --verbose --filter 'backend/training_steps_repeatable' 2>&1 |
		grep -E "four steps|\[PASS|\[FAIL|deterministic.*differ" | head -6
done
echo "=== test_backend (all)"
timeout 60 $B/tests/kernels/test_backend 2>&1 | grep -E "\[FAIL|Synthesis"
for d in 0 1 0 1; do
	MOE_CUDA_DETERMINISTIC=$d timeout 60 $B/tests/bench/bench_cuda -m share/models/seed-base.json -B 16 -n 6 -w 2 \
		2>/dev/null | tail -1 | sed "s/^/(MOE_CUDA_DETERMINISTIC=$d) /"
done
date -u
