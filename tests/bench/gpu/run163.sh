#!/bin/sh
# Session 22 (H200), call 163: after the mask change (6092e40), Nsight
# Compute (--set full, SASS stall samples) again on fa3f and fa3pk128, and
# on the routed experts' three GEMMs (gt_kernel forward, input gradient,
# weight gradient), each inside a seed-base step; the SASS of every kernel
# object (cuobjdump).  Everything in one archive ($OUT/r163.tgz: the device
# returns only a few files).
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
W=/tmp/r163
mkdir -p $W
N=/usr/local/cuda/bin/ncu
[ -x $N ] || N=ncu
prof() { # name regex skip
	timeout 170 $N --clock-control none --kernel-name-base mangled -k "regex:$2" --launch-skip $3 --launch-count 1 \
		--set full --import-source no -f -o $W/ncu-$1 $B/tests/bench/bench_cuda -m $M -B 16 -n 1 -w 0 >$W/ncu-$1.log 2>&1
	echo "=== $1 (rc $?)"
	$N -i $W/ncu-$1.ncu-rep --page details --print-details all >$W/ncu-$1.txt 2>&1
	grep -E "Duration|Pipe Tensor Cycles Active|Issue Slots Busy|Warp Cycles Per Issued|SM Frequency  " $W/ncu-$1.txt | sort -u | head -8
	$N -i $W/ncu-$1.ncu-rep --page source --csv --print-source sass >$W/ncu-$1-sass.csv 2>&1
	rm -f $W/ncu-$1.ncu-rep
}
prof att_bwd 'attention_bwd_fa3f_kernel' 3
prof att_fwd 'attention_fwd_fa3p_kernel' 3
prof gt_fwd 'gt_kernelILi0E' 4
prof gt_dgrad 'gt_kernelILi1E' 4
prof gt_wgrad 'gt_kernelILi2E' 4
for o in $B/kernels/*.o; do
	/usr/local/cuda/bin/cuobjdump -sass $o >$W/sass-$(basename $o .o).txt 2>&1
done
ls $W | head -50
tar czf $O/r163.tgz -C /tmp r163
ls -la $O
date -u
