#!/bin/sh
# Session 25 (H200), call 190: the weight gradient's clip squares without
# the per-element select (the clipped part zeroed under the block's
# warp-uniform test of its own; call 186's profile: some 460 instructions
# a tile) against a131c2b's build (oldb.tgz): grouped tests, test_backend,
# the same checkpoint bytes and the same logged gradient norms, Nsight
# Compute on the weight gradient inside a step (the squares run only
# there), steps interleaved.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
N=/usr/local/cuda/bin/ncu
[ -x $N ] || N=ncu
MET=gpu__time_duration.sum,smsp__inst_executed.sum,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active
{
echo "=== test_kernels *grouped*"
tk 200 test_kernels '*grouped*' | grep -E "\[FAIL|Assert|Synthesis"
echo "=== test_backend (all)"
tk 150 test_backend '*' | grep -E "\[FAIL|Assert|Synthesis" | tail -8
old_build
same_bytes $R/seed-3l.json
for v in old new; do
	echo "grad_norm $v: $(grep -o '"grad_norm":[^,]*' /tmp/run-$v/metrics.jsonl | tr '\n' ' ')"
done
for v in old new; do grep -o '"grad_norm":[^,]*' /tmp/run-$v/metrics.jsonl >/tmp/gn-$v.txt; done
cmp /tmp/gn-old.txt /tmp/gn-new.txt
echo "grad_norm lines compared (0 = the same): $? ($(wc -l </tmp/gn-new.txt) lines)"
for v in new old; do
	bcu=$B/tests/bench/bench_cuda
	[ $v = old ] && bcu=/tmp/oldb/bench_cuda
	for k in 'gt_kernelILi2ELi128ELi256' 'gt_kernelILi2ELi256ELi128'; do
		echo "--- ncu $v $k inside a step"
		timeout 100 $N --clock-control none --kernel-name-base mangled -k "regex:$k" --launch-skip 20 --launch-count 1 \
			--metrics $MET $bcu -m $M -B 16 -n 1 -w 1 2>&1 | grep -E "^ +(gpu__|sm__|smsp__)"
	done
done
bc
bc_old
bc
bc_old
} >$O/run190.txt 2>&1
cat $O/run190.txt
date -u
