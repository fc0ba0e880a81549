#!/bin/sh
# Session 13 (H200), call 91: the final code (the router's grid sums in one
# helper, the pinned upload buffers all made at the first upload): the
# router and z-loss kernel tests and the backend tests of the session;
# olmoe-1b-7b at micro-batch 2 and 3 with every step's time (call 90's
# micro-batch 2 had one step about 180 ms long in its three), torch_ref
# --preset olmoe in the same call.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}/run91.txt
steps() {
	echo "=== olmoe-1b-7b B=$1 T=4096"
	timeout 150 $B/tests/bench/bench_cuda -m share/models/olmoe-1b-7b.json -T 4096 -B $1 -n 3 -w 1 \
		2>/tmp/o.err | tail -1
	grep "^step" /tmp/o.err
}
{
echo "=== tests"
tk 120 test_kernels 'kernels/router' | grep -E "\[FAIL|Assert|Synthesis" | tail -4
tk 120 test_kernels 'kernels/zloss_and_stats' | grep -E "\[FAIL|Assert|Synthesis" | tail -4
tk 120 test_backend 'backend/router_in_place_matches' | grep -E "router in place|\[FAIL|Assert|Synthesis" | tail -4
tk 120 test_backend 'backend/transfers_without_waiting' | grep -E "\[FAIL|Assert|Synthesis" | tail -4
steps 2
steps 3
echo "=== torch_ref --preset olmoe --modes best_c (B=2, T=4096)"
timeout 300 python3 $R/torch_ref.py --preset olmoe --modes best_c 2>&1 | grep -v Warning | tail -2
steps 2
steps 3
date -u
} 2>&1 | tee $O
