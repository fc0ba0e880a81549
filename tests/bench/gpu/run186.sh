#!/bin/sh
# Session 25 (H200), call 186: where the expert weight gradient's time goes
# (Nsight Compute's per-instruction counters of gt_kernel<2, 128, 256>
# inside a seed-base step, with the clip's sums, as CSV for sass_mix.py;
# its duration and tensor pipe beside the forward's in bench_kernels), and
# steps with fa3's backward (MOE_CUDA_ATTENTION_BWD=fa3, now 1-2% faster
# than fa3f alone, call 185) interleaved with the default.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
N=/usr/local/cuda/bin/ncu
[ -x $N ] || N=ncu
W=/tmp/r186
mkdir -p $W
MET=gpu__time_duration.sum,smsp__inst_executed.sum,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,sm__cycles_active.avg,sm__cycles_active.max
{
echo "=== ncu gt wgrad 768x1280 inside a seed-base step (source counters)"
timeout 200 $N --clock-control none --kernel-name-base mangled -k "regex:gt_kernelILi2ELi128ELi256" --launch-skip 20 \
	--launch-count 1 --section SourceCounters --section WarpStateStats --section InstructionStats \
	--section SpeedOfLight --import-source no -f -o $W/wg \
	$B/tests/bench/bench_cuda -m $M -B 16 -n 1 -w 1 >$W/wg.log 2>&1
echo "rc $?"
tail -2 $W/wg.log
$N -i $W/wg.ncu-rep --page details --print-details all 2>&1 | grep -v "^ *-----" | head -60
$N -i $W/wg.ncu-rep --page source --csv --print-source sass >$W/wg-sass.csv 2>&1
echo "sass lines: $(wc -l <$W/wg-sass.csv)"
gzip -c $W/wg-sass.csv >$O/sass-s25-gt_wgrad.csv.gz
python3 $R/sass_mix.py $W/wg-sass.csv --top 25 --waits 2>&1 | head -80
for k in 'gt_kernelILi0ELi128ELi256' 'gt_kernelILi2ELi128ELi256'; do
	echo "--- ncu $k alone (bench_kernels -t -B 16 -g 0)"
	timeout 100 $N --clock-control none --kernel-name-base mangled -k "regex:$k" --launch-skip 5 --launch-count 1 \
		--metrics $MET $B/tests/bench/bench_kernels -t -B 16 -g 0 2>&1 | grep -E "^ +(gpu__|sm__|smsp__)"
done
bc
bc_as fa3bwd MOE_CUDA_ATTENTION_BWD=fa3
bc
bc_as fa3bwd MOE_CUDA_ATTENTION_BWD=fa3
} >$O/run186.txt 2>&1
cat $O/run186.txt
date -u
