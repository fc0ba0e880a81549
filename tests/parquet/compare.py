#!/usr/bin/env python3
"""Compare moe-fetch cat output (JSONL) with hyparquet-dump.mjs output.

usage: compare.py [--min-score X] [--min-int-score N] [--limit N] REFERENCE.jsonl OURS.jsonl
The filters are applied to the reference rows (as moe-fetch cat documents
them: null or smaller values are dropped).  Exits 0 when every row and value matches; prints the first differences.
"""
import json
import math
import sys


def same(ref, got):
    if isinstance(ref, dict) and "$skip" in ref:
        return True
    if isinstance(ref, dict) and "$big" in ref:
        return isinstance(got, int) and not isinstance(got, bool) and int(ref["$big"]) == got
    if ref is None or got is None:
        return ref is None and got is None
    if isinstance(ref, bool) or isinstance(got, bool):
        return ref is got
    if isinstance(ref, (int, float)) and isinstance(got, (int, float)):
        if isinstance(ref, int) and isinstance(got, int):
            return ref == got
        return float(ref) == float(got) or (math.isnan(float(ref)) and math.isnan(float(got)))
    if isinstance(ref, str) and isinstance(got, str):
        return ref == got
    if isinstance(ref, list) or isinstance(ref, dict):
        return False
    return False


def num(v):
    if isinstance(v, dict) and "$big" in v:
        return int(v["$big"])
    return v


def main():
    args = sys.argv[1:]
    opts = {}
    while args and args[0].startswith("--"):
        opts[args[0]] = args[1]
        args = args[2:]
    ref = [json.loads(l) for l in open(args[0], encoding="utf-8") if l.strip()]
    got = [json.loads(l) for l in open(args[1], encoding="utf-8") if l.strip()]
    if "--min-score" in opts:
        x = float(opts["--min-score"])
        ref = [r for r in ref if num(r.get("score")) is not None and num(r["score"]) >= x]
    if "--min-int-score" in opts:
        n = int(opts["--min-int-score"])
        ref = [r for r in ref if num(r.get("int_score")) is not None and num(r["int_score"]) >= n]
    if "--limit" in opts:
        ref = ref[:int(opts["--limit"])]
    bad = 0
    if len(ref) != len(got):
        print("row count: reference %d, moe-fetch %d" % (len(ref), len(got)))
        bad += 1
    values = 0
    for i, (r, g) in enumerate(zip(ref, got)):
        if list(r.keys()) != list(g.keys()):
            print("row %d: columns differ: %s vs %s" % (i, list(r.keys()), list(g.keys())))
            bad += 1
            continue
        for k in r:
            values += 1
            if not same(r[k], g[k]):
                bad += 1
                if bad <= 5:
                    print("row %d column %s: reference %r, moe-fetch %r" % (i, k, str(r[k])[:200], str(g[k])[:200]))
    if bad:
        print("%d differences" % bad)
        return 1
    print("%d rows, %d values identical" % (len(ref), values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
