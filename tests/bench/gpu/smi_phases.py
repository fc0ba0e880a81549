#!/usr/bin/env python3
"""The card's clock and power by phase of a device script (session 23's
power-wall measurement, tests/bench/RESULTS-cuda.md).

    python3 smi_phases.py SAMPLES PHASES [--min-watts W] [--utc-offset H]

SAMPLES: nvidia-smi's samples, plain or gzipped, one line each as
    nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,\\
        temperature.gpu,clocks_event_reasons.active \\
        --format=csv,noheader,nounits -lms 100
PHASES: lines "NAME-start SECONDS" and "NAME-end SECONDS" (date +%s.%N) around
each phase (common.sh's smi_start / phase / smi_stop write both).
nvidia-smi prints the machine's local time; --utc-offset gives its hours
east of UTC (0, the device machines').  For each phase, in the order they
started, the samples inside it with power at least W watts (default 0: all;
a phase's start-up idles below the cap): how many, the SM clock's mean,
minimum and maximum (MHz), the power's mean and maximum (W; nvidia-smi's
power.draw is a one-second average), the highest temperature and the
clock-event reasons seen (0x4: the software power cap)."""
import datetime
import gzip
import signal
import sys


def fail(msg):
    sys.exit(f"smi_phases.py: {msg}")


def load_samples(path, offset_h):
    op = gzip.open if path.endswith(".gz") else open
    tz = datetime.timezone(datetime.timedelta(hours=offset_h))
    rows = []
    try:
        with op(path, "rt") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                p = [x.strip() for x in line.split(",")]
                try:
                    t = datetime.datetime.strptime(p[0], "%Y/%m/%d %H:%M:%S.%f").replace(tzinfo=tz).timestamp()
                    rows.append((t, float(p[1]), float(p[3]), float(p[4]), p[5]))
                except (ValueError, IndexError):
                    fail(f"{path}:{n}: not an nvidia-smi sample line (timestamp, clocks.sm, clocks.mem, "
                         "power.draw, temperature.gpu, reasons)")
    except OSError as e:
        fail(f"{path}: {e.strerror}")
    return rows


def load_phases(path):
    start, end, order = {}, {}, []
    try:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                p = line.split()
                try:
                    name, t = p[0], float(p[1])
                except (ValueError, IndexError):
                    fail(f"{path}:{n}: not a phase line (NAME-start SECONDS or NAME-end SECONDS)")
                if name.endswith("-start"):
                    start[name[:-6]] = t
                    order.append(name[:-6])
                elif name.endswith("-end"):
                    end[name[:-4]] = t
                else:
                    fail(f"{path}:{n}: '{name}' ends in neither -start nor -end")
    except OSError as e:
        fail(f"{path}: {e.strerror}")
    for name in order:
        if name not in end:
            fail(f"{path}: phase '{name}' has a start and no end")
    return [(name, start[name], end[name]) for name in order]


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args, minw, off = [], 0.0, 0.0
    it = iter(sys.argv[1:])
    for a in it:
        try:
            if a == "--min-watts":
                minw = float(next(it))
            elif a == "--utc-offset":
                off = float(next(it))
            else:
                args.append(a)
        except (StopIteration, ValueError):
            fail(f"{a} needs a number")
    if len(args) != 2:
        sys.exit(__doc__.split("\n\n")[1])
    rows = load_samples(args[0], off)
    print("phase                samples  SM MHz mean   min   max  power W mean   max  temp  reasons")
    for name, a, b in load_phases(args[1]):
        r = [x for x in rows if a <= x[0] <= b and x[2] >= minw]
        if not r:
            print(f"{name:20s} {0:7d}  (no samples)")
            continue
        clk = [x[1] for x in r]
        pw = [x[2] for x in r]
        print(f"{name:20s} {len(r):7d} {sum(clk) / len(r):12.0f} {min(clk):5.0f} {max(clk):5.0f} "
              f"{sum(pw) / len(r):13.0f} {max(pw):5.0f} {max(x[3] for x in r):5.0f}  "
              + " ".join(sorted(set(x[4] for x in r))))


if __name__ == "__main__":
    main()
