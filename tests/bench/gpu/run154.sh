#!/bin/sh
# Session 21 (H200), call 154: the clustered TMA GEMMs with the peer's
# stage release at the default (block) scope instead of release.cluster
# (call 153: clusters 60% slower per multiprocessor even without sharing).
# The kernels (and without sharing); where the clustered forward wins, the
# grouped_tma tests, the same bytes as 8bbdc5c, steps beside 8bbdc5c's.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
for v in "X=" "MOE_CUDA_TMA_MC=0" "X="; do
	echo "=== bench_kernels -t -B 16 $v"
	env MOE_CUDA_TMA_DIAG=1 $v timeout 60 $B/tests/bench/bench_kernels -t -B 16 >/tmp/bk.out 2>&1
	echo "rc=$?"
	sed '/^attention/q' /tmp/bk.out | grep -E "tma (fwd|dgrad) .*cfg [0-4]|dense|differ" | grep -v " 0 of "
done
c1=$(awk '/tma fwd +768x1280 cfg 1/ {print $5}' /tmp/bk.out)
c2=$(awk '/tma fwd +768x1280 cfg 2/ {print $5}' /tmp/bk.out)
echo "cfg 1 $c1 cfg 2 $c2"
if awk "BEGIN{exit !($c1 < $c2)}"; then
	echo "=== test_kernels grouped_tma*"
	tk 200 test_kernels 'kernels/grouped_tma*' | grep -E "\[PASS|\[FAIL|Assert|Synthesis"
	same_bytes $R/seed-3l.json
	bc
	bc_old
	bc
	bc_old
fi
} >$O/run154.txt 2>&1
cat $O/run154.txt
date -u
