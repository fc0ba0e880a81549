#!/bin/sh
# Session 24 (H200), call 179: Nsight Compute's per-instruction counters
# (executed instructions and warp-state samples for each SASS line) of the
# expert forward GEMM (bench_kernels -t -g 0, routed rows), cuBLAS's dense
# GEMM of the same FLOPs (-E 1), and fa3f at seed-base, written as CSV
# (the source page) to look at offline: where the grouped kernel's 1.8x
# instructions and fa3f's stalls are.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
N=/usr/local/cuda/bin/ncu
[ -x $N ] || N=ncu
W=/tmp/r179
mkdir -p $W
src() { # name regex env bench_kernels-args...
	n=$1 re=$2 e=$3
	shift 3
	env $e timeout 150 $N --clock-control none --kernel-name-base mangled -k "regex:$re" --launch-skip 5 --launch-count 1 \
		--section SourceCounters --section WarpStateStats --section InstructionStats --section SpeedOfLight \
		--import-source no -f -o $W/$n $B/tests/bench/bench_kernels "$@" >$W/$n.log 2>&1
	echo "=== $n: bench_kernels $* (rc $?)"
	$N -i $W/$n.ncu-rep --page details --print-details all 2>&1 | grep -v "^ *-----" | head -80
	$N -i $W/$n.ncu-rep --page source --csv --print-source sass >$W/$n-sass.csv 2>&1
	echo "sass lines: $(wc -l <$W/$n-sass.csv)"
	gzip -c $W/$n-sass.csv >$O/$n-sass.csv.gz
}
{
src gt_fwd 'gt_kernelILi0ELi128ELi256' X= -t -B 16 -g 0
src cublas_dense 'nvjet' MOE_CUDA_GEMM_TUNE=0 -t -B 16 -g 0 -E 1
src fa3f 'attention_bwd_fa3f' X= -a -B 16
} >$O/run179.txt 2>&1
cat $O/run179.txt | head -400
date -u
