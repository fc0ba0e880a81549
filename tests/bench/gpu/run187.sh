#!/bin/sh
# Session 25 (H200), call 187: the weight gradient's tile fields broadcast
# from lane 0 (gt_tile_uniform: call 186's profile showed its k-slice
# positions, stage addresses and descriptors per thread, 16 R2UR and some
# 100 instructions a k-slice, because the tile comes from shared memory)
# against 0d0f866's build (oldb.tgz); oldb/bench_kernels_all the same for
# every mode (-DGT_UNI_ALL=1).  Grouped tests, test_backend, the same
# checkpoint bytes, bench_kernels -t interleaved, Nsight Compute's
# instructions, both builds' SASS of the weight gradient, steps.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
CO=/usr/local/cuda/bin/cuobjdump
[ -x $CO ] || CO=cuobjdump
{
echo "=== test_kernels *grouped*"
tk 200 test_kernels '*grouped*' | grep -E "\[FAIL|Assert|Synthesis"
echo "=== test_backend (all)"
tk 150 test_backend '*' | grep -E "\[FAIL|Assert|Synthesis" | tail -8
old_build
same_bytes $R/seed-3l.json
for v in new old; do
	bk=$(bk_of $v)
	$CO -sass -fun '_Z9gt_kernelILi2ELi128ELi256ELi4EEv14CUtensorMap_stS0_S0_7gt_args' $bk 2>&1 | gzip >$O/sass-wgrad-$v.txt.gz
	echo "sass $v: $(zcat $O/sass-wgrad-$v.txt.gz | grep -c '/\*[0-9a-f]*\*/') lines, R2UR $(zcat $O/sass-wgrad-$v.txt.gz | grep -c R2UR)"
done
for r in 1 2; do
	for v in new old all; do
		echo "--- $v bench_kernels -t -B 16"
		timeout 120 $(bk_of $v) -t -B 16 2>&1 | grep -E "tma (fwd|dgrad|wgrad store).*cfg 0|[1-9][0-9]* of [0-9]* elements differ"
	done
done
for v in new old all; do
	bk=$(bk_of $v)
	ncu_met "$v wgrad 768x1280" $bk 'gt_kernelILi2ELi128ELi256' -t -B 16 -g 0
	ncu_met "$v wgrad 640x768" $bk 'gt_kernelILi2ELi256ELi128' -t -B 16 -g 1
	[ $v = new ] || ncu_met "$v fwd 768x1280" $bk 'gt_kernelILi0ELi128ELi256' -t -B 16 -g 0
done
bc
bc_old
bc
bc_old
} >$O/run187.txt 2>&1
cat $O/run187.txt
date -u
