#!/bin/sh
# Session 7, call 38 (H100): Nsight Compute on the expert GEMM's forward
# (grouped_tma.cu, default configuration: cooperative 128 x 256, at
# 768 -> 1280 over 131,072 routed rows) and on cuBLAS's dense GEMM of the
# same FLOPs, which runs at 747 against 617 TFLOP/s (call 37): where does
# the grouped kernel lose?  Full reports in $OUT/ncu-*.txt, a few metrics
# printed.  Clocks left alone (--clock-control none).
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
N=/usr/local/cuda/bin/ncu
[ -x $N ] || N=ncu
prof() { # name regex skip
	timeout 200 $N --clock-control none --kernel-name-base mangled -k "regex:$2" --launch-skip $3 --launch-count 1 \
		--set detailed $B/tests/bench/bench_kernels -t -B 16 >$O/ncu-$1.txt 2>&1
	echo "=== $1 (rc $?)"
	grep -E "^  [a-z_]+.*\(|Duration|Compute \(SM\) Throughput|Memory Throughput|L1/TEX Hit|L2 Hit|DRAM Throughput|Registers Per|Shared Memory Configuration Size|Achieved Occupancy|Issue Slots Busy|Issued Warp Per|No Eligible|Active Warps Per|Eligible Warps|Warp Cycles Per Issued|Block Size|Grid Size|L2 Cache Throughput|L1/TEX Cache Throughput|SM Busy|Executed Ipc" $O/ncu-$1.txt | head -40
}
prof tma_fwd 'gt_kernelILi0ELi128ELi256ELi4ELi0ELi0E' 2
prof cublas 'nvjet|xmma|gemm_|Gemm' 2
echo "=== warp stall reasons (tma_fwd)"
grep -iE "stall|smsp__pcsamp" $O/ncu-tma_fwd.txt | head -30
date -u
