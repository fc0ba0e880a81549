#!/usr/bin/env python3
"""Summarise a ktrace.csv (ktrace.c): the training steps in it, each from
one embedding forward kernel to the next, and for the last full step: its
span, the time some kernel, memset or memcpy was running (busy), the idle
time between them, how many there were, the gaps' sizes, and the kernels
after the largest gaps.
    python3 ktrace.py ktrace.csv [STEP]   (STEP: which full step, default the last)"""
import sys
from collections import Counter

rows = []
with open(sys.argv[1]) as f:
    for line in f:
        s, e, k, name = line.rstrip("\n").split(",", 3)
        rows.append((int(s), int(e), int(k), name))
starts = [i for i, r in enumerate(rows) if r[2] == 0 and "embedding_fwd" in r[3]]
if len(starts) < 2:
    sys.exit("ktrace.py: fewer than two steps (embedding_fwd kernels) in " + sys.argv[1])
k = int(sys.argv[2]) if len(sys.argv) > 2 else len(starts) - 2
a, b = starts[k], starts[k + 1]
step = rows[a:b]
t0, t1 = step[0][0], rows[b][0]
busy, gaps, end = 0, [], t0
for s, e, kind, name in step:
    if s > end:
        gaps.append((s - end, name))
    busy += max(0, e - max(s, end))
    end = max(end, e)
if t1 > end:
    gaps.append((t1 - end, rows[b][3]))
span = t1 - t0
idle = span - busy
kinds = Counter(r[2] for r in step)
print(f"steps in trace: {len(starts) - 1} full; step {k}: span {span / 1e6:.2f} ms, busy {busy / 1e6:.2f} ms, "
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
