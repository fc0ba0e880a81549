#!/bin/sh
# Session 22 (H200), call 161: Nsight Compute (--set full, with the SASS
# stall samples) on the attention forward (fa3pk128), the attention
# backward (fa3f) and the routed experts' forward GEMM (gt_kernel<0>), each
# inside a seed-base step (bench_cuda -n 1 -w 0).  Reports under $OUT, the
# summary and the per-instruction sources (CSV) exported; clocks left alone.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
N=/usr/local/cuda/bin/ncu
[ -x $N ] || N=ncu
$N --version | tail -1
prof() { # name regex skip
	timeout 170 $N --clock-control none --kernel-name-base mangled -k "regex:$2" --launch-skip $3 --launch-count 1 \
		--set full --import-source no -f -o $O/ncu-$1 $B/tests/bench/bench_cuda -m $M -B 16 -n 1 -w 0 >$O/ncu-$1.log 2>&1
	echo "=== $1 (rc $?)"
	tail -2 $O/ncu-$1.log
	$N -i $O/ncu-$1.ncu-rep --page details --print-details all >$O/ncu-$1.txt 2>&1
	grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|L2 Hit|DRAM Throughput|Registers Per|Issue Slots Busy|No Eligible|Eligible Warps|Warp Cycles Per Issued|Executed Ipc A|Tensor|Dynamic Shared|SM Frequency" $O/ncu-$1.txt | head -30
	grep -oE "(each warp of this kernel spends|On average, each warp)[^.]*\.[^.]*\." $O/ncu-$1.txt | head -4
	$N -i $O/ncu-$1.ncu-rep --page source --csv --print-source sass >$O/ncu-$1-sass.csv 2>$O/ncu-$1-sass.err ||
		$N -i $O/ncu-$1.ncu-rep --page source --csv >$O/ncu-$1-sass.csv 2>>$O/ncu-$1-sass.err
	wc -l $O/ncu-$1-sass.csv; head -c 600 $O/ncu-$1-sass.csv; echo; head -3 $O/ncu-$1-sass.err
	gzip -f $O/ncu-$1-sass.csv $O/ncu-$1.txt
}
prof att_fwd 'attention_fwd_fa3p_kernel' 3
prof att_bwd 'attention_bwd_fa3f_kernel' 3
prof gt_fwd 'gt_kernelILi0E' 4
ls -la $O
date -u
