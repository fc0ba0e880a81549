#!/bin/sh
# Session 21 (H200), call 158: the QK-norm + RoPE pair backward with its
# registers capped (__launch_bounds__(128, 5): 96 registers, 12-20 bytes
# spilled; (128, 6): 80, 96-156 bytes spilled) against the committed build
# (102-108): bench_kernels -m and the per-op profile, interleaved.
# qkv.tgz: the two variants' bench_kernels and bench_cuda (mb5/, mb6/).
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
tar xzf $R/qkv.tgz -C /tmp
{
for r in 1 2; do
	for v in base mb5 mb6; do
		d=$B/tests/bench
		[ $v = base ] || d=/tmp/qkv/$v
		echo "--- $v"
		timeout 60 $d/bench_kernels -m -B 16 2>&1 | grep -E "^qknorm"
		profile_of $v "qknorm|wall" $d/bench_cuda
	done
done
} >$O/run158.txt 2>&1
cat $O/run158.txt
date -u
