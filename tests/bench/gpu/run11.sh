#!/bin/sh
# Session 3, call 3: gradients by overwrite, rmsnorm_bwd_add and the combine
# with the residual on a GPU (test_kernels, test_backend), then the step:
# default, with the memset (MOE_CUDA_GRAD_OVERWRITE=0), with the expert
# fusions 5 (forward + gate_up wgrad) and 1, beside torch_ref best_c; a profile.
set -u
R=$PWD/${RUNDIR:-.devrun}
export MOE_DATADIR=$PWD/share NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
B=$R/b
chmod +x $B/cmd/* $B/tests/*/*
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; date -u
echo "=== test_kernels"; LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 200 $B/tests/kernels/test_kernels 2>&1 | grep -v "^\[----\]" | tail -8
echo "=== test_backend"; LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 200 $B/tests/kernels/test_backend --verbose 2>&1 | grep -E "expert GEMMs|cosine over|overwrite|fused|PASS|FAIL|Synthesis|never|difference" | tail -16
export LD_LIBRARY_PATH=$R/lib
M=share/models/seed-base.json
bc() { echo "--- bench_cuda $*"; timeout 120 $B/tests/bench/bench_cuda -m $M -B 16 -n 6 -w 2 2>/tmp/bc.err; tail -1 /tmp/bc.err; }
bc
MOE_CUDA_GRAD_OVERWRITE=0 bc; echo "(MOE_CUDA_GRAD_OVERWRITE=0)"
MOE_CUDA_EXPERT_FUSE=5 bc; echo "(MOE_CUDA_EXPERT_FUSE=5)"
MOE_CUDA_EXPERT_FUSE=1 bc; echo "(MOE_CUDA_EXPERT_FUSE=1)"
echo "=== torch_ref best_c B=16"; timeout 240 python3 $R/torch_ref.py --preset seed --modes best_c 2>&1 | grep -v Warning | tail -2
bc
MOE_CUDA_EXPERT_FUSE=5 bc; echo "(MOE_CUDA_EXPERT_FUSE=5)"
echo "=== profile B=16"; timeout 100 $B/tests/bench/bench_cuda -m $M -B 16 -n 1 -w 2 -p 2>/dev/null | tail -n +2
date -u
