#!/bin/sh
# Session 14 (H100), call 97: the persistent 128-key attention forward
# (fa3pk128) as the default at head sizes 96 and 128, with launches on
# another stream than the device's last waiting for the device
# (afp_one_at_a_time).  Both GPU test binaries whole (the new
# kernels/attention_fa3p_two_streams among them), resume_gpu.sh; seed-base
# steps interleaved with session 13's default forward
# (MOE_CUDA_ATTENTION_FWD=fa3) beside torch_ref.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run97.txt
{
suites
tk 60 test_kernels 'kernels/attention_fa3p_two_streams' | grep -E "PASS|FAIL|Assert|Synthesis"
bc
bc_as "fa3 forward (session 13's default)" "MOE_CUDA_ATTENTION_FWD=fa3"
torch_seed
bc
bc_as "fa3 forward (session 13's default)" "MOE_CUDA_ATTENTION_FWD=fa3"
bc
date -u
} 2>&1 | tee $O
