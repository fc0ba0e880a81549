#!/bin/sh
# Session 23 (H200), call 173: Nsight Compute on the expert GEMMs, alone
# (bench_kernels -t -g, one shape), to see where the routed rows' spread
# costs (multinomial against -x, whole tiles) and where our kernel on one
# dense problem (-E 1) loses to cuBLAS's: the forward 768x1280 and the
# 640-column input gradient (256 x 128 tiles); per launch the duration,
# clock, SM active cycles (avg / min / max over SMs), tensor pipe, issue.
# (cuBLAS without the GEMM tuning, MOE_CUDA_GEMM_TUNE=0, so that its
# launches are all the same kernel.)
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
W=/tmp/r173
mkdir -p $W
N=/usr/local/cuda/bin/ncu
[ -x $N ] || N=ncu
MET=sm__cycles_active.avg,sm__cycles_active.min,sm__cycles_active.max,smsp__inst_executed.sum,sm__warps_active.avg.pct_of_peak_sustained_active
prof() { # name regex skip bench_kernels-args...
	n=$1 re=$2 sk=$3
	shift 3
	env ${ENVS:-X=} timeout 150 $N --clock-control none --kernel-name-base mangled -k "regex:$re" --launch-skip $sk --launch-count 1 \
		--section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
		--section WarpStateStats --section LaunchStats --metrics $MET -f -o $W/$n \
		$B/tests/bench/bench_kernels -t -B 16 "$@" >$W/$n.log 2>&1
	echo "=== $n: bench_kernels -t -B 16 $* (rc $?)"
	$N -i $W/$n.ncu-rep --page details --print-details all >$W/$n.txt 2>&1
	grep -E "^  [a-z_]+[A-Za-z0-9_<>, ]*\(|Duration|SM Frequency|Pipe Tensor|Issue Slots Busy|Warp Cycles Per Issued|Memory Throughput|L2 Hit|DRAM Throughput|L1/TEX Hit|Shared|Stall|sm__cycles_active|smsp__inst_executed.sum|warps_active|Grid Size|Registers Per" \
		$W/$n.txt | grep -v "^ *----" | head -40
	rm -f $W/$n.ncu-rep
}
prof fwd_multi 'gt_kernelILi0ELi128ELi256' 5 -g 0
prof fwd_exact 'gt_kernelILi0ELi128ELi256' 5 -g 0 -x
prof fwd_dense 'gt_kernelILi0ELi128ELi256' 5 -g 0 -E 1
ENVS=MOE_CUDA_GEMM_TUNE=0 prof cublas_dense 'nvjet' 5 -g 0 -E 1 # cuBLAS's own choice: no tuning launches
prof dg640_multi 'gt_kernelILi1ELi256ELi128' 5 -g 1
prof dg640_exact 'gt_kernelILi1ELi256ELi128' 5 -g 1 -x
tar czf $O/r173.tgz -C /tmp r173
date -u
