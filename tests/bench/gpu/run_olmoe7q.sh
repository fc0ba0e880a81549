#!/bin/sh
# Session 7, H200: RMSNorm's row kernels and the fused QK-norm + RoPE up to
# 2048 columns (olmoe's width).  Tests (rmsnorm, qknorm_rope, test_backend
# whole), then olmoe-1b-7b at seq 4096, micro-batch 3, the new binaries (b)
# against the previous ones (b0: 692d59d) interleaved, torch_ref --preset
# olmoe in the same call, a profile of the new step, and one seed-base step
# of each binary (a width the change does not touch).  Writes
# $OUT/run_olmoe7q.txt.
set -u
. "$(dirname "$0")/common.sh"
MO=share/models/olmoe-1b-7b.json
O=${OUT:-/tmp}/run_olmoe7q.txt
B0=$R/b0
chmod +x $B0/tests/*/* 2>/dev/null
ob() { # binaries-dir label
	echo "=== olmoe-1b-7b B=3 T=4096 ($2)"
	timeout 150 $1/tests/bench/bench_cuda -m $MO -T 4096 -B 3 -n 3 -w 1 2>/tmp/o.err | tail -1
	tail -1 /tmp/o.err
}
{
echo "=== test_kernels rmsnorm, qknorm_rope"
LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 120 $B/tests/kernels/test_kernels --verbose \
	--filter 'kernels/@(rmsnorm|qknorm_rope)' 2>&1 | grep -E "\[PASS|\[FAIL|Assert|Synthesis|D 2048|16 x 128|B 2 T 130" | tail -30
gpu_test test_backend "four steps|cosine over|PASS|FAIL|Assert|Synthesis" 30
ob $B new
ob $B0 "previous, 692d59d"
ob $B new
ob $B0 "previous, 692d59d"
echo "=== torch_ref --preset olmoe --modes best_c (B=2, T=4096)"
timeout 300 python3 $R/torch_ref.py --preset olmoe --modes best_c 2>&1 | grep -v Warning | tail -2
ob $B new
echo "=== profile olmoe B=3 (new)"
timeout 200 $B/tests/bench/bench_cuda -m $MO -T 4096 -B 3 -n 1 -w 2 -p 2>/dev/null | tail -n +2 | head -40
for b in $B $B0; do
	echo "--- seed-base $b"
	timeout 120 $b/tests/bench/bench_cuda -m $M -B 16 -n 6 -w 2 2>/dev/null | tail -1
done
date -u
} 2>&1 | tee $O
