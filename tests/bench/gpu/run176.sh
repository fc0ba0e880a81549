#!/bin/sh
# Session 23 (H200), call 176: is the attention backward's (fa3f) and
# forward's (fa3pk128) grid balanced over the SMs?  Nsight Compute's SM
# active cycles (mean, min, max over the 132 SMs) and duration for one
# launch of each, alone (bench_kernels -a), at seed-base and olmoe-like
# shapes.  (fa3f's blocks are dealt in head groups, each group's longest
# key blocks last, for the dQ order; a list-scheduling model of that order
# puts the busiest SM about 7% above the mean at seed-base.)
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
N=/usr/local/cuda/bin/ncu
[ -x $N ] || N=ncu
MET=gpu__time_duration.sum,sm__cycles_active.avg,sm__cycles_active.min,sm__cycles_active.max,sm__cycles_elapsed.max
prof() { # name regex bench_kernels-args...
	n=$1 re=$2
	shift 2
	timeout 100 $N --clock-control none -k "regex:$re" --launch-skip 3 --launch-count 1 --metrics $MET \
		$B/tests/bench/bench_kernels -a "$@" >/tmp/$n.txt 2>&1
	echo "=== $n: bench_kernels -a $* (rc $?)"
	grep -E "attention_(bwd|fwd)_fa3|gpu__time|sm__cycles" /tmp/$n.txt | head -8
}
{
prof fa3f_seed 'attention_bwd_fa3f_kernel' -B 16
prof fa3p_seed 'attention_fwd_fa3p_kernel' -B 16
prof fa3f_olmoe 'attention_bwd_fa3f_kernel' -B 8 -T 4096 -H 16 -d 128
prof fa3p_olmoe 'attention_fwd_fa3p_kernel' -B 8 -T 4096 -H 16 -d 128
} >$O/run176.txt 2>&1
cat $O/run176.txt
date -u
