#!/bin/sh
# Benchmark: moe-fetch cat decode rate (MB/s of text) on one core.
#   sh tests/bench/bench_parquet.sh [MOE_FETCH] [FILE...]
# MOE_FETCH defaults to the build's cmd/moe-fetch (or $MOE_BIN/moe-fetch);
# FILE defaults to the FineWeb-shaped files of ../shared/data/parquet.
# Each file is decoded REPS times per run (default 20, one process), best of
# RUNS runs (default 5); output goes to /dev/null; the process is pinned to
# one CPU with taskset when available.  The text volume is counted
# independently (python3 json over one decode).  Prints a table.
# MOE_PARQUET_SNAPPY=libsnappy in the environment makes moe-fetch decode
# snappy pages with libsnappy instead of lib/parquet's own decoder.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
F=${1:-${MOE_BIN:-$here/../../build/cmd}/moe-fetch}
[ $# -gt 0 ] && shift
if [ $# -eq 0 ]; then
	S=${MOE_SHARED:-$here/../../../shared}/data/parquet/fineweb-shaped
	set -- "$S/sotu-snappy-v1.parquet" "$S/sotu-zstd-v2.parquet" "$S/sotu-none-plain.parquet"
fi
REPS=${REPS:-20}
RUNS=${RUNS:-5}
pin=""
command -v taskset >/dev/null 2>&1 && pin="taskset -c 0"
echo "cpu: $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo 2>/dev/null | head -1)"
echo "snappy decoder: ${MOE_PARQUET_SNAPPY:-native} (MOE_PARQUET_SNAPPY=libsnappy for libsnappy)"
printf '%-28s %10s %8s %10s %10s\n' file "text MB" docs "best s" "MB/s"
for f in "$@"; do
	[ -f "$f" ] || { echo "missing $f" >&2; continue; }
	stats=$("$F" cat -c text "$f" | python3 -c '
import json, sys
n = b = 0
for line in sys.stdin:
    n += 1
    b += len(json.loads(line)["text"].encode())
print(n, b)')
	docs=${stats% *}
	bytes=${stats#* }
	args=""
	i=0
	while [ $i -lt "$REPS" ]; do args="$args $f"; i=$((i + 1)); done
	best=""
	r=0
	while [ $r -lt "$RUNS" ]; do
		t=$(python3 -c '
import subprocess, sys, time
t = time.perf_counter()
subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True)
print(time.perf_counter() - t)' $pin "$F" cat -c text $args)
		best=$(python3 -c 'import sys; a=[float(x) for x in sys.argv[1:] if x]; print(min(a))' $best $t)
		r=$((r + 1))
	done
	python3 -c '
import sys
name, mb, docs, reps, best = sys.argv[1], int(sys.argv[2]) / 1e6, int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
print("%-28s %10.1f %8d %10.3f %10.0f" % (name, mb * reps, docs * reps, best, mb * reps / best))' \
		"$(basename "$f")" "$bytes" "$docs" "$REPS" "$best"
done
