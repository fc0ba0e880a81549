#!/bin/sh
# Parquet diagnostics on the GPU host's CPU: the decode path on two cores,
# whole-process rate over more passes, pyarrow one thread and all threads.
set -u
. "$(dirname "$0")/common.sh"
F=$R/pq/sotu-snappy-v1.parquet
grep -m1 "model name" /proc/cpuinfo; grep -m1 "cpu MHz" /proc/cpuinfo; grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E "^(bmi2|avx2|avx512bw|erms|fsrm)$" | tr '\n' ' '; echo
which perf || echo "no perf"
echo "=== bench_parquet -a on cores 3 and 9"
taskset -c 3 $B/tests/bench/bench_parquet -a -n 5 -r 20 $F | tail -3
taskset -c 9 $B/tests/bench/bench_parquet -a -n 5 -r 20 $F | tail -3
echo "=== moe-fetch cat, whole process, REPS=100"; REPS=100 RUNS=3 timeout 60 sh tests/bench/bench_parquet.sh $B/cmd/moe-fetch $F | tail -1
echo "=== pyarrow one thread / all threads"
python3 tests/bench/bench_parquet_pyarrow.py --reps 20 --runs 3 $F | tail -1
python3 - "$F" <<'PY'
import sys, time, os
import pyarrow.parquet as pq, pyarrow.compute as pc
f = sys.argv[1]
t = pq.read_table(f, columns=["text"])
nb = pc.sum(pc.binary_length(t.column("text"))).as_py()
best = 1e9
for _ in range(3):
    t0 = time.perf_counter()
    for _ in range(20):
        pq.read_table(f, columns=["text"], use_threads=True, memory_map=False)
    best = min(best, time.perf_counter() - t0)
print("pyarrow use_threads=True (%d CPUs): %.0f MB/s" % (os.cpu_count(), nb * 20 / 1e6 / best))
PY
