#!/bin/sh
# Session 15 (H100), call 107: fa3f's grid with each head group's longest
# key blocks first and each dQ tile's contributions added in key-block
# order 0, 1, .. (asc, the candidate default) against the order before
# (MOE_CUDA_FA3F_ORDER=desc): the attention and step tests, bench_kernels -a
# at seed-base and olmoe's shape both ways, steps both ways interleaved
# beside torch_ref.  Everything in $OUT/run107.txt, printed last.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
echo "=== tests (asc)"
tk 150 test_kernels 'kernels/attention_fa3f*' | grep -E "\[FAIL|Assert|Synthesis" | tail -4
tk 120 test_backend 'backend/dq_fusion_same_step' | grep -E "\[FAIL|Assert|Synthesis" | tail -3
tk 120 test_backend 'backend/train_step_matches_cpu_dh*' | grep -E "cosine over|\[FAIL|Assert|Synthesis" | tail -4
tk 120 test_backend 'backend/training_steps_repeatable' | grep -E "four steps|\[FAIL|Assert|Synthesis" | tail -3
echo "=== bench_kernels -a: seed-base (asc, desc), olmoe's shape (asc, desc)"
timeout 60 $B/tests/bench/bench_kernels -a -B 16 2>&1 | grep -E "bwd fa3f "
MOE_CUDA_FA3F_ORDER=desc timeout 60 $B/tests/bench/bench_kernels -a -B 16 2>&1 | grep -E "bwd fa3f "
timeout 90 $B/tests/bench/bench_kernels -a -B 3 -T 4096 -H 16 -d 128 2>&1 | grep -E "bwd fa3f "
MOE_CUDA_FA3F_ORDER=desc timeout 90 $B/tests/bench/bench_kernels -a -B 3 -T 4096 -H 16 -d 128 2>&1 | grep -E "bwd fa3f "
echo "=== steps (asc default; desc) beside torch_ref"
bc
bc_as desc MOE_CUDA_FA3F_ORDER=desc
torch_seed
bc
bc_as desc MOE_CUDA_FA3F_ORDER=desc
bc
} >$O/run107.txt 2>&1
cat $O/run107.txt
date -u
