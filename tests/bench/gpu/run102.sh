#!/bin/sh
# Session 15 (H100), call 102: Nsight Compute on the step's memory-bound
# kernels below their byte floor (QK-norm + RoPE backward from bf16 dK and
# from fa3f's fp32 dQ tiles, its forward, swiglu_bwd_rows, rmsnorm_rows_bwd,
# AdamW) and on the attention backward (fa3f), inside a seed-base step
# (bench_cuda -n 1 -w 0).  Full reports in $OUT/ncu-*.txt, key metrics and
# the stall reasons printed.  Clocks left alone (--clock-control none).
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
N=/usr/local/cuda/bin/ncu
[ -x $N ] || N=ncu
prof() { # name regex skip
	timeout 150 $N --clock-control none --kernel-name-base mangled -k "regex:$2" --launch-skip $3 --launch-count 1 \
		--set detailed $B/tests/bench/bench_cuda -m $M -B 16 -n 1 -w 0 >$O/ncu-$1.txt 2>&1
	echo "=== $1 (rc $?)"
	grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|L1/TEX Hit|L2 Hit|DRAM Throughput|Registers Per|Achieved Occupancy|Theoretical Occupancy|Issue Slots Busy|No Eligible|Eligible Warps|Warp Cycles Per Issued|Block Size|Grid Size|L2 Cache Throughput|L1/TEX Cache Throughput|Executed Ipc A|Dynamic Shared" $O/ncu-$1.txt | head -30
	grep -oE "(each warp of this kernel spends|On average, each warp)[^.]*\.[^.]*\." $O/ncu-$1.txt | head -4
}
prof qp_bwd_k 'qknorm_rope_pair_bwd_kernelILi16ELi3ELb0E' 3
prof qp_bwd_acc 'qknorm_rope_pair_bwd_kernelILi16ELi3ELb1E' 3
prof qp_fwd 'qknorm_rope_pair_fwd_kernel' 6
prof swiglu_bwd_rows 'swiglu_bwd_rows_kernel' 3
prof rms_bwd 'rmsnorm_rows_bwd_kernel' 5
prof adamw 'adamw4_kernel' 4
prof att_bwd 'attention_bwd_fa3f_kernel' 3
date -u
