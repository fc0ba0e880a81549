#!/bin/sh
# Lead's GPU call: olmoe-1b-7b (6.92B parameters) on one card, ours at the
# largest micro-batch that fits (seq 4096) beside torch_ref --preset olmoe.
set -u
. "$(dirname "$0")/common.sh"
nproc
M=share/models/olmoe-1b-7b.json
for mb in 1 2 3 4; do
	echo "=== ours olmoe-1b-7b B=$mb T=4096"
	timeout 200 $B/tests/bench/bench_cuda -m $M -T 4096 -B $mb -n 3 -w 1 >/tmp/o.txt 2>&1
	rc=$?
	grep -v '^step [1-9]' /tmp/o.txt
	[ $rc = 0 ] || break
done
echo "=== torch_ref --preset olmoe --modes best_c (B=2, T=4096)"
timeout 300 python3 $R/torch_ref.py --preset olmoe --modes best_c 2>&1 | grep -v Warning | tail -3
date -u
