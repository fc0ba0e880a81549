#!/bin/sh
# Session 7 (H100): the norms' old kernels, which rows wider than 2048 take,
# with 4 chunks a lane in flight and a grid that fills the card (b) against
# af2cb90 (b0): the rmsnorm test at 2056, 4096 and 6144 columns, then a
# profiled step of a 4096-wide test model (tests/bench/gpu/wide-4096.json:
# 3 layers, 32 heads of 128, 16 experts top-2; micro-batch 4, seq 2048),
# each binary twice.  Writes $OUT/run44.txt.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run44.txt
B0=$R/b0
chmod +x $B0/tests/*/* 2>/dev/null
W=$R/wide-4096.json
{
echo "=== test_kernels rmsnorm, qknorm_rope"
LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 120 $B/tests/kernels/test_kernels --verbose \
	--filter 'kernels/@(rmsnorm|qknorm_rope)' 2>&1 | grep -E "\[PASS|\[FAIL|Assert|Synthesis|D 4096|D 6144" | tail -20
for k in 1 2; do
	for b in $B $B0; do
		echo "=== profile wide-4096 B=4 ($b)"
		timeout 120 $b/tests/bench/bench_cuda -m $W -B 4 -T 2048 -n 3 -w 2 -p 2>/dev/null |
			grep -E "step_ms|rmsnorm|qknorm|rope|total" | sed 's/"model".*"step_ms"/"step_ms"/'
	done
done
date -u
} 2>&1 | tee $O
