#!/bin/sh
# Session 25 (H200), call 185: the warpgroup index made warp-uniform in the
# attention kernels (gpu/s24-att-uniform.patch: fa3, fa3f, fa3p/fa3pk128)
# against 43eac42's build (oldb.tgz, session 24's final code): attention
# tests, all of test_backend, the same checkpoint bytes, bench_kernels -a
# interleaved, Nsight Compute's instructions of fa3f and fa3pk128, steps
# interleaved with torch_ref between them.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
echo "=== test_kernels *attention*"
tk 240 test_kernels '*attention*' | grep -E "\[FAIL|Assert|Synthesis"
echo "=== test_backend (all)"
tk 150 test_backend '*' | grep -E "\[FAIL|Assert|Synthesis" | tail -8
old_build
same_bytes $R/seed-3l.json
for r in 1 2; do
	for v in new old; do
		echo "--- $v bench_kernels -a -B 16"
		timeout 120 $(bk_of $v) -a -B 16 2>&1 | grep -E "attention|[1-9][0-9]* of [0-9]* elements differ"
	done
done
for v in new old; do
	ncu_met "$v fa3f seed-base" $(bk_of $v) 'attention_bwd_fa3f' -a -B 16
	ncu_met "$v fa3pk128 seed-base" $(bk_of $v) 'fa3pk' -a -B 16
done
bc
bc_old
torch_seed
bc
bc_old
} >$O/run185.txt 2>&1
cat $O/run185.txt
date -u
