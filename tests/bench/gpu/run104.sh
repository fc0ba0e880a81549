#!/bin/sh
# Session 15 (H100), call 104: (1) why the last of bench_cuda's 8 steps is
# 6-10 ms slower than its median in every run since session 13: long runs
# (bench_cuda -n 24, torch_ref --steps 24, the latter's per-step times
# printed by a copy that only adds that print) with the card's SM clock,
# power and clock-event reasons logged every 100 ms (nvidia-smi; clocks left
# alone); (2) AdamW with two vectors a thread (MOE_CUDA_ADAMW=x2): its
# kernel test, a traced step, long runs.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
F=clocks_event_reasons.active
nvidia-smi --query-gpu=$F --format=csv,noheader >/dev/null 2>&1 || F=clocks_throttle_reasons.active
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,power.limit,temperature.gpu,$F \
	--format=csv,noheader -lms 100 >$O/smi.csv 2>&1 &
SMI=$!
mark() { echo "$(date -u +%H:%M:%S.%N | cut -c1-12) $*" | tee -a $O/marks.txt; }
echo "=== adamw tests (default, x2)"
tk 60 test_kernels 'kernels/adamw*' | grep -E "\[FAIL|Assert|Synthesis" | tail -3
MOE_CUDA_ADAMW=x2 tk 60 test_kernels 'kernels/adamw*' | grep -E "\[FAIL|Assert|Synthesis" | tail -3
echo "=== traced steps (default, x2): AdamW kernels over the trace's 5 steps"
ktr ktrace-def
ktr ktrace-x2 MOE_CUDA_ADAMW=x2
for f in ktrace-def ktrace-x2; do
	zcat $O/$f.csv.gz | awk -F, '/adamw/ {n[$4]++; t[$4]+=($2-$1)/1e6} END {for (k in n) printf "%s %8.3f ms %4d %s\n", FILENAME, t[k], n[k], substr(k,1,40)}'
done
long() { # label env...
	l=$1
	shift
	mark "start $l"
	env "$@" timeout 120 $B/tests/bench/bench_cuda -m $M -B 16 -n 24 -w 2 2>$O/long-$l.err | sed "s/^/($l) /"
	mark "end $l"
	grep -E "^step" $O/long-$l.err | awk '{printf "%s ", $3} END {print ""}'
}
echo "=== long runs (per-step host ms)"
long def X=1
sed 's/ts.sort()/print("per-step ms", [round(t, 2) for t in ts], flush=True); ts.sort()/' $R/torch_ref.py >$R/torch_ref_steps.py
mark "start torch"
timeout 300 python3 $R/torch_ref_steps.py --preset seed --modes best_c --steps 24 2>&1 | grep -v Warning | tail -3
mark "end torch"
long x2 MOE_CUDA_ADAMW=x2
long def2 X=1
echo "=== standard runs"
bc
bc_as x2 MOE_CUDA_ADAMW=x2
kill $SMI
echo "=== clocks around the runs (SM MHz, W: min / median / max per 1 s window, from smi.csv)"
python3 - $O/smi.csv $O/marks.txt <<'PY'
import sys, statistics
rows = []
for line in open(sys.argv[1]):
    p = [x.strip() for x in line.split(",")]
    if len(p) < 7 or not p[1].split()[0].isdigit():
        continue
    t = p[0].split()[1]
    rows.append((t, int(p[1].split()[0]), float(p[3].split()[0]), p[5], p[6]))
print("samples", len(rows))
for i in range(0, len(rows), 10):
    w = rows[i:i + 10]
    c = [r[1] for r in w]; pw = [r[2] for r in w]
    print(w[0][0][:12], "SM", min(c), int(statistics.median(c)), max(c), " W", int(min(pw)), int(statistics.median(pw)), int(max(pw)), " T", w[-1][3], " reasons", sorted(set(r[4] for r in w)))
print(open(sys.argv[2]).read())
PY
date -u
