#!/bin/sh
# Session 16 (H100), call 112: packed masters (the optimizer's spans without
# norm weights kept as the bf16 compute copy and the masters' low 16 bits;
# AdamW moves 28 bytes a parameter instead of 30).  The new and nearby tests,
# resume_gpu.sh, then steps packed (default) and plain
# (MOE_CUDA_PACKED_MASTERS=0) interleaved beside torch_ref best_c, and a
# kernel trace of each.  Everything in $OUT/run112.txt; a summary last.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
echo "=== tests"
tk 120 test_kernels 'kernels/adamw*' | grep -E "\[PASS|\[FAIL|Assert|Synthesis" | tail -8
tk 120 test_backend 'backend/packed*' | grep -E "packed masters|\[PASS|\[FAIL|Assert|Synthesis" | tail -12
tk 120 test_backend 'backend/training_steps_repeatable' | grep -E "four steps|\[PASS|\[FAIL|Assert|Synthesis" | tail -8
tk 120 test_backend 'backend/train_step_matches_cpu_dh96' | grep -E "cosine over|\[PASS|\[FAIL|Assert|Synthesis" | tail -8
echo "=== resume_gpu.sh"
MOE_BIN=$B/cmd MOE_BUILDDIR=$B MOE_SRCDIR=$PWD timeout 150 sh tests/train/resume_gpu.sh >$O/resume.out 2>&1
echo "rc=$?"
tail -3 $O/resume.out
echo "=== steps"
bc
bc_as plain MOE_CUDA_PACKED_MASTERS=0
torch_seed
bc
bc_as plain MOE_CUDA_PACKED_MASTERS=0
bc
echo "=== traces"
ktr pk
ktr plain MOE_CUDA_PACKED_MASTERS=0
} >$O/run112.txt 2>&1
grep -E "^=== |PASS|FAIL|Assert|Synthesis|packed masters|four steps|cosine over|rc=|step_ms|busy|span" $O/run112.txt |
	sed 's/"model".*"step_ms"/"step_ms"/; s/"tflops".*//; s/"shape".*"step_ms"/"step_ms"/' | tail -60
date -u
