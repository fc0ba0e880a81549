#!/bin/sh
# Session 23 (H200), call 171: the review commits 48be64c / 8f2705d on a
# card (attention tests, test_backend); the card's SM clock and power
# sampled every 100 ms (nvidia-smi) through a seed-base bench_cuda run, the
# isolated expert GEMMs (bench_kernels -t) and torch_ref best_c, each phase
# summarised (mean / min clock, mean power, the throttle reasons seen);
# the expert GEMMs (bench_kernels -t, the new -x and -E) with every expert
# exactly 2,048 rows (whole tiles) and as one dense GEMM (-E 1), each beside
# cuBLAS's dense GEMM of the same shape.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
S=$O/smi171.csv
P=$O/phases171.txt
ph() { echo "$1 $(date +%s.%N)" >>$P; }
{
echo "=== test_kernels attention*"
tk 200 test_kernels 'kernels/attention*' | grep -E "\[FAIL|Assert|Synthesis"
echo "=== test_backend (all)"
tk 150 test_backend '*' | grep -E "\[FAIL|Assert|Synthesis" | tail -8
: >$P
F=clocks_event_reasons.active
nvidia-smi --query-gpu=$F --format=csv,noheader >/dev/null 2>&1 || F=clocks_throttle_reasons.active
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,$F \
	--format=csv,noheader,nounits -lms 100 >$S 2>/dev/null &
SMI=$!
sleep 2
ph idle-start; sleep 2; ph idle-end
ph bench_cuda-start; bc; ph bench_cuda-end
ph bench_kernels_t-start
timeout 120 $B/tests/bench/bench_kernels -t -B 16 2>&1 | grep -E "routing|tma (fwd|dgrad|wgrad)|cuBLAS"
ph bench_kernels_t-end
ph torch_ref-start; torch_seed; ph torch_ref-end
ph bench_cuda2-start; bc; ph bench_cuda2-end
kill $SMI
for o in "-x" "-E 1"; do
	echo "--- bench_kernels -t -B 16 $o"
	timeout 120 $B/tests/bench/bench_kernels -t -B 16 $o 2>&1 | grep -E "routing|tma (fwd|dgrad|wgrad)|cuBLAS|differ"
done
python3 - "$S" "$P" <<'PY'
import sys, datetime
rows = []
for line in open(sys.argv[1]):
    f = [x.strip() for x in line.split(",")]
    try:
        t = datetime.datetime.strptime(f[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
        rows.append((t, float(f[1]), float(f[2]), float(f[3]), float(f[4]), f[5]))
    except (ValueError, IndexError):
        pass
ph = {}
for line in open(sys.argv[2]):
    n, t = line.split()
    ph[n] = float(t)
print("phase              samples  sm MHz mean  min   max  power W mean  max   temp  reasons")
for n in ["idle", "bench_cuda", "bench_kernels_t", "torch_ref", "bench_cuda2"]:
    a, b = ph.get(n + "-start"), ph.get(n + "-end")
    if a is None or b is None:
        continue
    r = [x for x in rows if a <= x[0] <= b]
    busy = [x for x in r if x[3] > 200] or r
    if not busy:
        continue
    reasons = sorted(set(x[5] for x in busy))
    print(f"{n:18s} {len(busy):7d}  {sum(x[1] for x in busy)/len(busy):11.0f} {min(x[1] for x in busy):5.0f} "
          f"{max(x[1] for x in busy):5.0f}  {sum(x[3] for x in busy)/len(busy):12.0f} {max(x[3] for x in busy):5.0f} "
          f"{max(x[4] for x in busy):6.0f}  {' '.join(reasons)[:60]}")
PY
} >$O/run171.txt 2>&1
gzip -f $S
cat $O/run171.txt
date -u
