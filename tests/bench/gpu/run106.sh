#!/bin/sh
# Session 15 (H100), call 106, the final code (9dde798's kernels: call 105's
# delta kernel was not kept): steps beside torch_ref as every session
# measured them, interleaved, and long runs of both (bench_cuda -n 24;
# torch_ref --steps 24 through a copy that also prints its per-step times)
# with the card's SM clock and power logged every 100 ms (nvidia-smi; clocks
# left alone).  Everything in $OUT/run106.txt; a summary printed last.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
F=clocks_event_reasons.active
nvidia-smi --query-gpu=$F --format=csv,noheader >/dev/null 2>&1 || F=clocks_throttle_reasons.active
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,$F --format=csv,noheader -lms 100 \
	>$O/smi.csv 2>&1 &
SMI=$!
mark() { echo "$(date -u +%H:%M:%S.%N | cut -c1-12) $*" >>$O/marks.txt; }
{
echo "=== steps (as every session: bench_cuda -n 6 -w 2, torch_ref best_c)"
mark "start bc1"; bc; mark "end bc1"
mark "start torch"; torch_seed; mark "end torch"
mark "start bc2"; bc; mark "end bc2"
mark "start bc3"; bc; mark "end bc3"
mark "start torch2"; torch_seed; mark "end torch2"
mark "start bc4"; bc; mark "end bc4"
echo "=== long runs: 24 timed steps each"
mark "start long"
timeout 120 $B/tests/bench/bench_cuda -m $M -B 16 -n 24 -w 2 2>$O/long.err
mark "end long"
grep -E "^step" $O/long.err | awk '{printf "%s ", $3} END {print ""}'
sed 's/ts.sort()/print("per-step ms", [round(t, 2) for t in ts], flush=True); ts.sort()/' $R/torch_ref.py >$R/torch_ref_steps.py
mark "start torchlong"
timeout 300 python3 $R/torch_ref_steps.py --preset seed --modes best_c --steps 24 2>&1 | grep -v Warning | tail -3
mark "end torchlong"
} >$O/run106.txt 2>&1
kill $SMI
python3 - $O/smi.csv $O/marks.txt >>$O/run106.txt <<'PY'
import sys, statistics
rows = []
for line in open(sys.argv[1]):
    p = [x.strip() for x in line.split(",")]
    if len(p) < 5 or not p[1].split()[0].isdigit():
        continue
    h, m, s = p[0].split()[1].split(":")
    rows.append((int(h) * 3600 + int(m) * 60 + float(s), int(p[1].split()[0]), float(p[2].split()[0]), p[4]))
marks = {}
for line in open(sys.argv[2]):
    t, what, name = line.split()
    h, m, s = t.split(":")
    marks.setdefault(name, {})[what] = int(h) * 3600 + int(m) * 60 + float(s)
print("=== the card while each run was under load (samples drawing over 300 W): SM MHz median, W median, power-capped share")
for name, w in marks.items():
    x = [r for r in rows if w.get("start", 0) <= r[0] <= w.get("end", 0) and r[2] > 300]
    if x:
        cap = sum(1 for r in x if int(r[3], 16) & 4) / len(x)
        print(f"{name:10s} {len(x):4d} samples  SM {int(statistics.median(r[1] for r in x))} MHz  "
              f"{int(statistics.median(r[2] for r in x))} W  capped {100 * cap:.0f}%")
PY
grep -v "^$" $O/run106.txt | tail -70
date -u
