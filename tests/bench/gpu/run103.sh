#!/bin/sh
# Session 15 (H100), call 103: QK-norm + RoPE backward with its shared
# memory in lane order (qp_lm; MOE_CUDA_QP_LM=0 the column order of before):
# the kernel tests, bench_kernels -m both ways, a traced step both ways
# (kernel times), the losses of both (the same bits expected), steps
# interleaved with torch_ref; then Nsight Compute's warp states on the
# kernels still below their byte floor.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
echo "=== tests"
tk 120 test_kernels 'kernels/qknorm_rope*' | grep -E "\[FAIL|Assert|Synthesis" | tail -6
tk 120 test_kernels 'kernels/rmsnorm*' | grep -E "\[FAIL|Assert|Synthesis" | tail -4
tk 120 test_backend 'backend/dq_fusion_same_step' | grep -E "\[FAIL|Assert|Synthesis" | tail -4
tk 120 test_backend 'backend/train_step_matches_cpu_dh96' | grep -E "cosine over|\[FAIL|Assert|Synthesis" | tail -4
echo "=== bench_kernels -m (lane order, then column order)"
timeout 100 $B/tests/bench/bench_kernels -m -B 16 2>&1 | grep -E "qknorm|copy|rmsnorm" | head -8
MOE_CUDA_QP_LM=0 timeout 100 $B/tests/bench/bench_kernels -m -B 16 2>&1 | grep -E "qknorm" | head -4
echo "=== losses (lane order, column order)"
timeout 100 $B/tests/bench/bench_cuda -m $M -B 16 -n 2 -w 1 2>&1 | grep -E "^step" | cut -c1-60
MOE_CUDA_QP_LM=0 timeout 100 $B/tests/bench/bench_cuda -m $M -B 16 -n 2 -w 1 2>&1 | grep -E "^step" | cut -c1-60
echo "=== traces"
ktr ktrace-lm
ktr ktrace-cols MOE_CUDA_QP_LM=0
for f in ktrace-lm ktrace-cols; do
	echo "--- $f"
	zcat $O/$f.csv.gz | awk -F, '/qknorm_rope_pair/ {n[$4]++; t[$4]+=($2-$1)/1e6} END {for (k in n) printf "%8.3f ms %4d %s\n", t[k], n[k], substr(k,1,50)}'
done
echo "=== steps"
bc
torch_seed
bc_as cols MOE_CUDA_QP_LM=0
bc
N=/usr/local/cuda/bin/ncu
[ -x $N ] || N=ncu
prof() { # name regex skip
	timeout 150 $N --clock-control none --kernel-name-base mangled -k "regex:$2" --launch-skip $3 --launch-count 1 \
		--section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \
		--section MemoryWorkloadAnalysis --section LaunchStats \
		$B/tests/bench/bench_cuda -m $M -B 16 -n 1 -w 0 >$O/ncu-$1.txt 2>&1
	echo "=== $1 (rc $?)"
	grep -E "Duration|DRAM Throughput|L1/TEX Cache Throughput|Registers Per|Achieved Occupancy|Warp Cycles Per Issued|No Eligible|Grid Size" $O/ncu-$1.txt | head -12
	grep -oE "(each warp of this kernel spends|On average, each warp)[^.]*\.[^.]*\." $O/ncu-$1.txt | head -3
}
prof qp_bwd_k_lm 'qknorm_rope_pair_bwd_kernelILi16ELi3ELb0ELb1E' 3
prof qp_fwd 'qknorm_rope_pair_fwd_kernel' 6
prof rms_bwd 'rmsnorm_rows_bwd_kernel' 5
prof delta 'att_delta_rows_kernel' 3
prof adamw3 'adamw4_kernel' 3
date -u
