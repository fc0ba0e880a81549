#!/bin/sh
# Session 14 (H100), call 93: session 13's final code (a9abd58), the opt-in
# variants measured again beside the default and torch_ref in one call:
# the persistent attention forwards (MOE_CUDA_ATTENTION_FWD=fa3p,
# fa3pk128), SwiGLU in the gate_up epilogue (MOE_CUDA_TMA_FUSE=1) and the
# attention backward's head groups (MOE_CUDA_FA3F_G).
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run93.txt
{
bc
bc_as "fa3p" "MOE_CUDA_ATTENTION_FWD=fa3p"
bc_as "fa3pk128" "MOE_CUDA_ATTENTION_FWD=fa3pk128"
bc_as "TMA_FUSE=1" "MOE_CUDA_TMA_FUSE=1"
bc_as "FA3F_G=16" "MOE_CUDA_FA3F_G=16"
torch_seed
bc
bc_as "fa3p" "MOE_CUDA_ATTENTION_FWD=fa3p"
bc_as "fa3pk128" "MOE_CUDA_ATTENTION_FWD=fa3pk128"
bc_as "TMA_FUSE=1" "MOE_CUDA_TMA_FUSE=1"
bc_as "FA3F_G=4" "MOE_CUDA_FA3F_G=4"
bc
date -u
} 2>&1 | tee $O
