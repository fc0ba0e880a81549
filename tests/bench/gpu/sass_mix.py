#!/usr/bin/env python3
"""Where a kernel's instructions and stalls go, from Nsight Compute's source
page exported as CSV (session 24: the expert GEMM against cuBLAS's, fa3f;
tests/bench/sass-s24-*.csv.gz, RESULTS-tma.md):

    ncu --section SourceCounters ... -o REP BINARY ...
    ncu -i REP.ncu-rep --page source --csv --print-source sass > K.csv

    python3 sass_mix.py K.csv[.gz] [--top N] [--lines A:B ...] [--waits]

Prints the executed warp instructions and warp-state samples in all, then
the opcodes (the mnemonic before its first dot, a predicate dropped) by
instructions with their shares of both; --lines A:B sums lines A to B - 1
(0-based, as --waits and the opcode listing number them: the kernel's
first SASS line is 0); --waits lists every mbarrier wait (SYNCS.PHASECHK)
with its executions and the samples of the line after it (the branch that
loops while the phase is not complete): a wait executed again in a retry
loop shows there as a second line with its own count."""
import csv
import gzip
import sys
from collections import Counter


def load(path):
    op = gzip.open if path.endswith(".gz") else open
    try:
        with op(path, "rt", newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        sys.exit(f"sass_mix.py: {path}: {e}")
    # the header is the first row with these columns (ncu writes the kernel's name above it)
    for h, row in enumerate(rows[:5]):
        if "Source" in row and "Instructions Executed" in row:
            break
    else:
        sys.exit(f"sass_mix.py: {path}: no header with 'Source' and 'Instructions Executed' "
                 "in the first 5 rows (ncu --page source --csv --print-source sass)")
    hdr = rows[h]
    isrc, iex = hdr.index("Source"), hdr.index("Instructions Executed")
    ism = next((hdr.index(c) for c in ("Warp Stall Sampling (All Samples)", "Warp Stall Sampling (All Cycles)")
                if c in hdr), None)
    out = []
    for n, r in enumerate(rows[h + 1:], start=h + 2):
        if len(r) <= max(isrc, iex, ism or 0):
            sys.exit(f"sass_mix.py: {path}: line {n}: {len(r)} fields, the header has {len(hdr)}")
        try:
            ex = int(r[iex] or 0)
            sm = int(r[ism] or 0) if ism is not None else 0
        except ValueError:
            sys.exit(f"sass_mix.py: {path}: line {n}: not a count: {r[iex]!r}")
        out.append((r[isrc].strip(), ex, sm))
    return out


def opcode(src):
    w = src.split()
    if w and w[0].startswith("@"):
        w = w[1:]
    return w[0].split(".")[0] if w else "?"


def main():
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        sys.exit(__doc__.split("\n\n")[1])
    path, top, regions, waits = args[0], 20, [], False
    it = iter(args[1:])
    for a in it:
        if a == "--top":
            try:
                top = int(next(it))
            except (StopIteration, ValueError):
                sys.exit("sass_mix.py: --top needs a whole number")
        elif a == "--lines":
            try:
                lo, hi = (int(x) for x in next(it).split(":"))
            except (StopIteration, ValueError):
                sys.exit("sass_mix.py: --lines needs A:B, two whole numbers")
            regions.append((lo, hi))
        elif a == "--waits":
            waits = True
        else:
            sys.exit(f"sass_mix.py: unknown option {a}\n" + __doc__.split("\n\n")[1])
    lines = load(path)
    tex = sum(x[1] for x in lines)
    tsm = sum(x[2] for x in lines)
    print(f"{path}: {len(lines)} SASS lines, {tex} warp instructions executed, {tsm} warp-state samples")
    ex, sm = Counter(), Counter()
    for src, e, s in lines:
        o = opcode(src)
        ex[o] += e
        sm[o] += s
    print(f"{'opcode':<14} {'instructions':>13} {'share':>6} {'samples':>7}")
    for o, e in ex.most_common(top):
        print(f"{o:<14} {e:>13} {100 * e / max(tex, 1):5.1f}% {100 * sm[o] / max(tsm, 1):6.1f}%")
    for lo, hi in regions:
        if not 0 <= lo < hi <= len(lines):
            sys.exit(f"sass_mix.py: --lines {lo}:{hi}: outside 0:{len(lines)}")
        e = sum(x[1] for x in lines[lo:hi])
        s = sum(x[2] for x in lines[lo:hi])
        print(f"lines {lo}:{hi}: {e} instructions ({100 * e / max(tex, 1):.1f}%), "
              f"{s} samples ({100 * s / max(tsm, 1):.1f}%)")
    if waits:
        print("mbarrier waits (line, executions, samples of the next line, instruction):")
        for i, (src, e, s) in enumerate(lines):
            if "SYNCS.PHASECHK" in src:
                nxt = lines[i + 1][2] if i + 1 < len(lines) else 0
                print(f"{i:6d} {e:10d} {nxt:7d}  {src}")


if __name__ == "__main__":
    main()
