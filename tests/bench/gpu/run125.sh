#!/bin/sh
# Session 17 (H100), call 125: overlap_probe.c (built by hand against the
# session's kernel library): AdamW on packed masters (one seed-base
# layer's routed experts, 94 M parameters) on a low-priority stream beside
# the routed gate_up forward GEMM (64 experts x 2,048 rows, 768 -> 1,280)
# on a high-priority one: how much AdamW work gets done while the GEMMs
# run, with the GEMM at 168 or 160 registers (MOE_CUDA_GT_LEAN) and AdamW's
# blocks of 256, 128 or 64 threads (MOE_CUDA_ADAMW_TPB).
set -u
R=$PWD/${RUNDIR:-.devrun125}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for v in "X=0" "MOE_CUDA_ADAMW_TPB=64" "MOE_CUDA_GT_LEAN=1" "MOE_CUDA_GT_LEAN=1 MOE_CUDA_ADAMW_TPB=64" \
	"MOE_CUDA_GT_LEAN=1 MOE_CUDA_ADAMW_TPB=128" "MOE_CUDA_GT_LEAN=1 MOE_CUDA_ADAMW_TPB=32" "X=0"; do
	echo "--- $v"
	env $v timeout 60 $R/ov 40
done
date -u
