#!/usr/bin/env python3
"""Summarise a ktrace CSV (ktrace.c; plain or gzipped, as the traces in
tests/bench/): the training steps in it, each from one embedding forward
kernel to the next, and for one full step (STEP, default the last)
  by default: its span, the time some kernel, memset or memcpy was running
    (busy), the idle time between them, how many there were, the gaps'
    sizes, and the kernels after the largest gaps;
  --parts: where it goes by part of the model: each part's kernel time (the
    kernels' own durations, summed: kernels on the optimizer stream overlap
    the main stream's, so the parts can add up to more than the span) and
    share of the span; the forward's span (the embedding to the first
    cross-entropy kernel); where AdamW's kernels ran; the --top N (default
    12) longest kernels.  Session 18's breakdowns in
    tests/bench/RESULTS-cuda.md come out of it as they stand there, from
    the committed traces ktrace-s18-*.csv.gz.
    python3 ktrace.py TRACE [STEP] [--parts [--top N]]"""
import gzip
import re
import signal
import sys
from collections import Counter

# (part, regular expression on the kernel's name), first match wins
PARTS = [
    ("AdamW", r"adamw"),
    ("attention backward (fa3f, delta)", r"attention_bwd|att_delta|fa3f_dq"),
    ("attention forward", r"attention_fwd"),
    ("expert GEMMs: forward", r"gt_kernelILi0|grouped_fwd|gw_fwd"),
    ("expert GEMMs: input gradients", r"gt_kernelILi1|grouped_dgrad|gw_dgrad"),
    ("expert GEMMs: weight gradients", r"gt_kernelILi2|grouped_wgrad|gw_wgrad"),
    ("cuBLAS GEMMs", r"nvjet|cublas|splitKreduce|gemm|sm90_xmma"),
    ("SwiGLU both ways", r"swiglu"),
    ("norms and QK-norm + RoPE", r"rmsnorm|qknorm|rope"),
    ("gather, combine, scatter", r"gather|combine|scatter_add|colsum"),
    ("cross-entropy", r"xent"),
    ("router and routing", r"router|rg_|route|aux_|zloss|balance"),
    ("memsets and copies", r"^memset|^memcpy|copy_rows"),
]


def load(path):
    op = gzip.open if path.endswith(".gz") else open
    rows = []
    with op(path, "rt") as f:
        for n, line in enumerate(f, 1):
            try:
                s, e, k, name = line.rstrip("\n").split(",", 3)
                rows.append((int(s), int(e), int(k), name))
            except ValueError:
                sys.exit(f"ktrace.py: {path}:{n}: not a ktrace line (start,end,kind,name)")
    return rows


def gaps_summary(step, t0, t1, next_name, k, nsteps):
    busy, gaps, end = 0, [], t0
    for s, e, kind, name in step:
        if s > end:
            gaps.append((s - end, name))
        busy += max(0, e - max(s, end))
        end = max(end, e)
    if t1 > end:
        gaps.append((t1 - end, next_name))
    span = t1 - t0
    idle = span - busy
    kinds = Counter(r[2] for r in step)
    print(f"steps in trace: {nsteps} full; step {k}: span {span / 1e6:.2f} ms, busy {busy / 1e6:.2f} ms, "
          f"idle {idle / 1e6:.2f} ms ({100 * idle / span:.1f}%)")
    print(f"kernels {kinds[0]}, memsets {kinds[1]}, memcpys {kinds[2]}; gaps {len(gaps)}, "
          f"mean {sum(g for g, _ in gaps) / max(1, len(gaps)) / 1e3:.2f} us")
    hist = Counter()
    for g, _ in gaps:
        hist["<1us" if g < 1000 else "1-2us" if g < 2000 else "2-4us" if g < 4000 else "4-10us" if g < 10000
             else ">=10us"] += g
    for key in ("<1us", "1-2us", "2-4us", "4-10us", ">=10us"):
        print(f"  gaps {key:>6}: {hist[key] / 1e6:.3f} ms")
    by = Counter()
    for g, name in gaps:
        by[name.split("<")[0].split("(")[0][:48]] += g
    print("idle before (kernel, ms):")
    for name, g in by.most_common(12):
        print(f"  {g / 1e6:8.3f}  {name}")


def parts_summary(path, step, t0, span, k, nsteps, top):
    parts, other, names = Counter(), Counter(), Counter()
    for s, e, kind, name in step:
        short = name.split("(")[0][:70]
        names[short] += e - s
        for part, pat in PARTS:
            if re.search(pat, name):
                parts[part] += e - s
                break
        else:
            other[short] += e - s
    print(f"{path}: step {k} of {nsteps}, span {span / 1e6:.2f} ms")
    print(f"{'ms':>9} {'share':>6}  part")
    for part, _ in PARTS:
        print(f"{parts[part] / 1e6:9.2f} {100 * parts[part] / span:5.1f}%  {part}")
    rest = sum(other.values())
    print(f"{rest / 1e6:9.2f} {100 * rest / span:5.1f}%  the rest: "
          + ", ".join(f"{n} {v / 1e6:.2f}" for n, v in other.most_common(4)))
    xent = [r for r in step if "xent" in r[3]]
    if xent:
        print(f"forward (embedding to the first cross-entropy kernel): {(xent[0][0] - t0) / 1e6:.2f} ms")
    adam = [r for r in step if "adamw" in r[3]]
    if adam:
        first, last = min(r[0] for r in adam), max(r[1] for r in adam)
        fwd = [r for r in adam if xent and r[0] < xent[0][0]]
        where = (f", {len(fwd)} of {len(adam)} started before the cross-entropy"
                 f" (the last of those ended at {(max(r[1] for r in fwd) - t0) / 1e6:.2f} ms)") if fwd else ""
        print(f"AdamW: {len(adam)} kernels from {(first - t0) / 1e6:.2f} to {(last - t0) / 1e6:.2f} ms{where}")
    print(f"the {top} longest kernels (ms, summed over the step):")
    for n, v in names.most_common(top):
        print(f"{v / 1e6:9.3f}  {n}")


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # | head
    args = sys.argv[1:]
    parts, top = "--parts" in args, 12
    if parts:
        args.remove("--parts")
    if "--top" in args:
        i = args.index("--top")
        top = int(args[i + 1])
        del args[i:i + 2]
    if not args:
        sys.exit(__doc__)
    rows = load(args[0])
    starts = [i for i, r in enumerate(rows) if r[2] == 0 and "embedding_fwd" in r[3]]
    if len(starts) < 2:
        sys.exit("ktrace.py: fewer than two steps (embedding_fwd kernels) in " + args[0])
    k = int(args[1]) if len(args) > 1 else len(starts) - 2
    if not 0 <= k < len(starts) - 1:
        sys.exit(f"ktrace.py: {args[0]}: step {k} not in 0..{len(starts) - 2}")
    a, b = starts[k], starts[k + 1]
    step, t0, t1 = rows[a:b], rows[a][0], rows[b][0]
    if parts:
        parts_summary(args[0], step, t0, t1 - t0, k, len(starts) - 1, top)
    else:
        gaps_summary(step, t0, t1, rows[b][3], k, len(starts) - 1)


if __name__ == "__main__":
    main()
