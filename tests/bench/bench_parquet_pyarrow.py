#!/usr/bin/env python3
"""Benchmark: pyarrow reading the text column of the FineWeb-shaped Parquet
files on one core (use_threads=False), in MB/s of text, to compare with
tests/bench/bench_parquet.sh (moe-fetch cat) on the same machine.

usage: bench_parquet_pyarrow.py [--reps N] [--runs N] FILE...
Prints a table: file, text MB, best seconds, MB/s.  Reading = decoding the
column into an Arrow array (no Python strings are built).
"""
import argparse
import os
import time

import pyarrow.compute as pc
import pyarrow.parquet as pq


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    except (AttributeError, OSError):
        pass
    print("%-28s %10s %10s %10s" % ("file", "text MB", "best s", "MB/s"))
    for f in a.files:
        t = pq.read_table(f, columns=["text"], use_threads=False)
        nbytes = pc.sum(pc.binary_length(t.column("text"))).as_py()
        best = None
        for _ in range(a.runs):
            t0 = time.perf_counter()
            for _ in range(a.reps):
                pq.read_table(f, columns=["text"], use_threads=False, memory_map=False)
            dt = time.perf_counter() - t0
            best = dt if best is None else min(best, dt)
        mb = nbytes * a.reps / 1e6
        print("%-28s %10.1f %10.3f %10.0f" % (os.path.basename(f), mb, best, mb / best))


if __name__ == "__main__":
    main()
