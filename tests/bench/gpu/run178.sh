#!/bin/sh
# Session 24 (H200), call 178: mbarrier waits with a suspend-time hint
# (wgmma.cuh WG_WAIT_NS, 1 ms) against 9811fee's build (oldb.tgz, no hint):
# the same checkpoint bytes, the expert GEMMs and attention kernels alone
# (bench_kernels, interleaved), Nsight Compute's instructions and cycles
# of the forward GEMM and fa3f in both builds, steps interleaved with the
# card's clock and power, torch_ref.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
MET=gpu__time_duration.sum,sm__cycles_active.avg,sm__cycles_active.max,smsp__inst_executed.sum,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,smsp__cycles_active.avg
{
old_build
same_bytes $R/seed-3l.json
for r in 1 2; do
	for v in new old; do
		bk=$B/tests/bench/bench_kernels
		[ $v = old ] && bk=/tmp/oldb/bench_kernels
		echo "--- $v bench_kernels -t -B 16"
		timeout 120 $bk -t -B 16 2>&1 | grep -E "tma (fwd|dgrad|wgrad store).*cfg 0|[1-9][0-9]* of [0-9]* elements differ"
		echo "--- $v bench_kernels -a -B 16"
		timeout 120 $bk -a -B 16 2>&1 | grep -E "default"
	done
done
for v in new old; do
	bk=$B/tests/bench/bench_kernels
	[ $v = old ] && bk=/tmp/oldb/bench_kernels
	ncu_met "$v fwd 768x1280" $bk 'gt_kernelILi0ELi128ELi256' -t -B 16 -g 0
	ncu_met "$v fa3f seed-base" $bk 'attention_bwd_fa3f' -a -B 16
done
smi_start smi-s24-call178
phase new1 bc
phase old1 bc_old
phase torch torch_seed
phase new2 bc
phase old2 bc_old
smi_stop 600
} >$O/run178.txt 2>&1
cat $O/run178.txt
date -u
