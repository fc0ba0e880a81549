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


def compare_info(ref_path, info_path):
    """`moe-fetch info FILE` against hyparquet's footer summary."""
    ref = json.load(open(ref_path))
    lines = open(info_path, encoding="utf-8").read().splitlines()
    head = lines[1].split(", ")
    got = {"rows": int(head[0].split()[0]), "row_groups": int(head[1].split()[0])}
    cols = []
    for line in lines[3:]:
        f = line.split()
        cols.append({"name": f[0], "codec": f[-4], "encodings": sorted(f[-3].split(",")),
                     "compressed": int(f[-2]), "uncompressed": int(f[-1])})
    bad = []
    if got["rows"] != ref["rows"] or got["row_groups"] != ref["row_groups"]:
        bad.append("rows/row groups %s vs %s" % (got, (ref["rows"], ref["row_groups"])))
    if ref["created_by"] and ("written by " + ref["created_by"]) not in lines[1]:
        bad.append("created_by")
    if len(cols) != len(ref["columns"]):
        bad.append("%d columns vs %d" % (len(cols), len(ref["columns"])))
    for c, r in zip(cols, ref["columns"]):
        for k in ("name", "codec", "encodings", "compressed", "uncompressed"):
            if c[k] != r[k]:
                bad.append("%s %s: %r vs %r" % (r["name"], k, c[k], r[k]))
    if bad:
        print("; ".join(bad[:5]))
        return 1
    print("footer agrees: %d rows, %d row groups, %d columns" % (got["rows"], got["row_groups"], len(cols)))
    return 0


def main():
    args = sys.argv[1:]
    if args and args[0] == "--info":
        return compare_info(args[1], args[2])
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
