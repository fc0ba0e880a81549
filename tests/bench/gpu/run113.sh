#!/bin/sh
# Session 16 (H100), call 113: packed masters with the compute copy rounded
# ties away from zero everywhere (packed and plain the same bits), and the
# optimizer stream (MOE_CUDA_OPT_STREAM=1, opt-in: AdamW beside the next
# forward).  Their tests and resume_gpu.sh both ways, then steps interleaved
# beside torch_ref best_c, a kernel trace with the optimizer stream.
# Everything in $OUT/run113.txt; a summary printed last.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
echo "=== tests"
tk 120 test_kernels 'kernels/adamw*' | grep -E "\[----\]|\[PASS|\[FAIL|Synthesis" | tail -12
tk 120 test_backend 'backend/packed*' | grep -E "\[----\]|packed masters|\[PASS|\[FAIL|Synthesis" | tail -12
tk 120 test_backend 'backend/opt_stream*' | grep -E "\[----\]|optimizer stream|\[PASS|\[FAIL|Synthesis" | tail -12
tk 120 test_backend 'backend/training_steps_repeatable' | grep -E "\[----\]|four steps|\[PASS|\[FAIL|Synthesis" | tail -8
tk 120 test_backend 'backend/train_step_matches_cpu_dh96' | grep -E "\[----\]|cosine over|\[PASS|\[FAIL|Synthesis" | tail -8
for v in X=0 MOE_CUDA_OPT_STREAM=1; do
	echo "=== resume_gpu.sh $v"
	env $v MOE_BIN=$B/cmd MOE_BUILDDIR=$B MOE_SRCDIR=$PWD timeout 150 sh tests/train/resume_gpu.sh >$O/resume-$v.out 2>&1
	echo "rc=$?"
	tail -2 $O/resume-$v.out
done
echo "=== steps"
bc
bc_as ostream MOE_CUDA_OPT_STREAM=1
torch_seed
bc
bc_as ostream MOE_CUDA_OPT_STREAM=1
bc_as plain MOE_CUDA_PACKED_MASTERS=0
bc_as ostream MOE_CUDA_OPT_STREAM=1
bc
echo "=== traces"
ktr os MOE_CUDA_OPT_STREAM=1
} >$O/run113.txt 2>&1
grep -E "^=== |\[----\]|PASS|FAIL|Synthesis|packed masters|optimizer stream|four steps|cosine over|rc=|step_ms|busy|span" $O/run113.txt |
	sed 's/"model".*"step_ms"/"step_ms"/; s/"tflops".*"loss"/"loss"/; s/"shape".*"step_ms"/"step_ms"/' | tail -70
date -u
