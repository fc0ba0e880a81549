#!/bin/sh
# moe-fetch cat with the generic snappy build as the default, beside
# libsnappy and pyarrow, on the GPU host's CPU (the card is not used).
set -u
. "$(dirname "$0")/common.sh"
F=$R/pq/sotu-snappy-v1.parquet
grep -m1 "model name" /proc/cpuinfo; nproc; date -u
for round in 1 2; do
	echo "=== round $round: bench_parquet -a (libsnappy, native = generic build, bmi2)"
	taskset -c 3 $B/tests/bench/bench_parquet -a -n 5 -r 20 $F | tail -3
	echo "=== round $round: moe-fetch cat, whole process, REPS=20 / REPS=100"
	REPS=20 RUNS=3 sh tests/bench/bench_parquet.sh $B/cmd/moe-fetch $F | tail -1
	REPS=100 RUNS=3 sh tests/bench/bench_parquet.sh $B/cmd/moe-fetch $F | tail -1
	echo "=== round $round: moe-fetch cat with libsnappy, REPS=20"
	MOE_PARQUET_SNAPPY=libsnappy REPS=20 RUNS=3 sh tests/bench/bench_parquet.sh $B/cmd/moe-fetch $F | tail -1
	echo "=== round $round: pyarrow, one thread"
	python3 tests/bench/bench_parquet_pyarrow.py --reps 20 --runs 3 $F | tail -1
done
date -u
