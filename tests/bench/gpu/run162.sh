#!/bin/sh
# Session 22 (H200), call 162: the attention kernels' causal mask under a
# warp-uniform branch of its own (fa3f's P^T and the forwards' S: before,
# the compiler evaluated every element's predicate on every tile, edge or
# not; call 161's SASS samples put those instructions at 13% of fa3f's).
# The SASS of the new fa3f<96> and fa3p<96> (cuobjdump), the attention
# tests, the same checkpoint bytes as 7d17d62's build (same results as
# 5b27946, call 160), both builds' attention kernels (bench_kernels -a) and
# steps interleaved, torch_ref best_c once.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
for f in attention_fa3 attention_fa3p; do
	/usr/local/cuda/bin/cuobjdump -sass $R/$f.new.cubin >$O/sass-$f.txt 2>&1
	echo "$f: $(wc -l <$O/sass-$f.txt) SASS lines"
done
gzip -f $O/sass-*.txt
echo "=== test_kernels attention*"
tk 200 test_kernels 'kernels/attention*' | grep -E "\[PASS|\[FAIL|Assert|Synthesis"
same_bytes $R/seed-3l.json
for r in 1 2; do
	for v in new old; do
		bk=$B/tests/bench/bench_kernels
		[ $v = old ] && bk=/tmp/oldb/bench_kernels
		echo "--- $v bench_kernels -a"
		timeout 60 $bk -a -B 16 2>&1 | grep -E "fwd fa3pk128|bwd fa3f |default"
	done
done
echo "--- olmoe-like shape"
for v in new old; do
	bk=$B/tests/bench/bench_kernels
	[ $v = old ] && bk=/tmp/oldb/bench_kernels
	timeout 60 $bk -a -B 8 -T 4096 -H 16 -d 128 2>&1 | grep -E "fwd fa3pk128|bwd fa3f |default" | sed "s/^/($v) /"
done
bc
bc_old
bc
bc_old
torch_seed
} >$O/run162.txt 2>&1
cat $O/run162.txt
date -u
