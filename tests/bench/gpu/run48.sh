#!/bin/sh
# Session 9 (H100), call 48: upper bounds, not candidates.  Experiment
# builds of bench_kernels (made outside the tree, in $R/e; their outputs are
# wrong on purpose) against the default binary, to see where two kernels'
# time goes before changing them:
#   e1  grouped_tma.cu, the forward / input gradient's full 64-row blocks
#       not stored (no epilogue through shared memory and TMA stores)
#   e2  grouped_tma.cu, the 128 x 256 cooperative tiles with 3 ring stages
#       instead of 4 (room for more epilogue buffers)
#   e3  attention_fa3.cu fa3f*: the dQ writer adds nothing (no reduce, no
#       ordering waits)
#   e4  attention_fa3.cu fa3f*: no barrier between the consumer warpgroups
#       before the dQ product, no dQ staging, no writer (dQ computed, dropped)
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run48.txt
E=$R/e
chmod +x $E/* 2>/dev/null
{
for k in 1 2; do
	echo "=== bench_kernels -t -B 16: default"
	timeout 60 $B/tests/bench/bench_kernels -t -B 16 2>&1 | grep -E "cfg 0  |dense"
	for v in e1 e2; do
		echo "=== bench_kernels -t -B 16: $v"
		timeout 60 $E/bench_kernels_$v -t -B 16 2>&1 | grep -E "cfg 0  |dense"
	done
done
for k in 1 2; do
	for v in default e3 e4; do
		echo "=== bench_kernels -a -B 16: $v"
		bin=$E/bench_kernels_$v
		[ $v = default ] && bin=$B/tests/bench/bench_kernels
		timeout 60 $bin -a -B 16 2>&1 | grep -E "bwd|backward" | grep -E "fa3 |fa3f|default" | head -12
	done
done
date -u
} 2>&1 | tee $O
