#!/bin/sh
# Session 19 (H200), call 141: an attention variant name the kernels do not
# have is an error (backend creation), not the default run silently: its
# test_backend test, moe-train's message for a removed name, and the whole
# test_backend again with the check in place.  Second run (call 142): the
# removed grouped-GEMM variables refused too.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
echo "=== test_backend removed_grouped_variables_refused, attention_variant_names_checked"
tk 60 test_backend 'backend/*_refused' | grep -E "\[PASS|\[FAIL|Assert|Synthesis"
tk 60 test_backend 'backend/attention_variant_names_checked' | grep -E "\[PASS|\[FAIL|Assert|Synthesis"
echo "=== moe-train with MOE_CUDA_ATTENTION_FWD=fa3p"
$B/tests/train/mkdata /tmp/d 300 >/dev/null
MOE_CUDA_ATTENTION_FWD=fa3p timeout 60 $B/cmd/moe-train --model tiny --data /tmp/d --device cuda --steps 1 \
	--micro-batch 2 --seq-len 128 -q --out /tmp/r1 >/tmp/mt.out 2>&1
echo "rc=$?"
tail -2 /tmp/mt.out
echo "=== moe-train with MOE_CUDA_TMA_FUSE=1"
MOE_CUDA_TMA_FUSE=1 timeout 60 $B/cmd/moe-train --model tiny --data /tmp/d --device cuda --steps 1 \
	--micro-batch 2 --seq-len 128 -q --out /tmp/r2 >/tmp/mt.out 2>&1
echo "rc=$?"
tail -2 /tmp/mt.out
echo "=== test_backend (all)"
tk 120 test_backend '*' | grep -E "\[FAIL|Assert|Synthesis" | tail -8
} >$O/run141.txt 2>&1
cat $O/run141.txt | tail -20
date -u
