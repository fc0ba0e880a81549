#!/usr/bin/env python3
"""A model of how fa3f's grid (kernels/attention_fa3.cu, the default
attention backward) spreads over the SMs, to weigh a grid order before
writing it (session 23: the model says 7% at seed-base, Nsight Compute
measured 6.6%, tests/bench/RESULTS-cuda.md).

    python3 fa3f_sched.py [-B 16] [-T 2048] [-H 8] [-G 8] [--sms 132] [--tail-group N]
                          [--split-heads N [--split-cost C]]

One block a head and 128-key block n (NK = T / 128 of them), dealt in
fa3f's ticket order (awg_group): groups of G heads, in each group the key
blocks from n = NK - 1 down to 0, the group's heads in turn at each n
(--tail-group N: the last N heads one group instead).  A block streams
the query tiles of 64 rows from 2n to T / 64 - 1, the first of them (half
masked, one warpgroup idle) counted as half a tile; each block goes to the
SM that frees first (list scheduling: one block an SM, the dQ waits left
out).  --split-heads N: the last N heads' blocks longer than half the
query tiles each dealt as two blocks of half the length plus C tiles
(--split-cost, default 1: the second load of K and V and the fp32
partial dK, dV one half writes and the other reads; session 25 weighed
splitting the grid's last long blocks this way: at most 3% at
seed-base).  Prints the blocks, the mean and busiest SM's tiles, their
ratio (what the tail costs the kernel) and the same for the
longest-first order (no order constraint: the bound)."""
import heapq
import sys


def jobs(B, T, H, G, tail, split=0, cost=1):
    NK, nq = T // 128, T // 64
    BH = B * H
    body = max(BH - tail, 0)  # the heads in groups of G; the last `tail` one group
    groups = [min(G, body - h) for h in range(0, body, G)] + ([BH - body] if body < BH else [])
    out, h0 = [], 0
    for g in groups:
        for n in range(NK - 1, -1, -1):
            for h in range(h0, h0 + g):
                length = nq - 2 * n - 0.5
                if h >= BH - split and length > nq / 2:
                    out += [length / 2 + cost] * 2
                else:
                    out.append(length)
        h0 += g
    return out


def makespan(order, sms):
    free = [0.0] * sms
    for length in order:
        t = heapq.heappop(free)
        heapq.heappush(free, t + length)
    return max(free)


def main():
    opts = {"-B": 16, "-T": 2048, "-H": 8, "-G": 8, "--sms": 132, "--tail-group": 0, "--split-heads": 0,
            "--split-cost": 1}
    it = iter(sys.argv[1:])
    for a in it:
        if a not in opts:
            sys.exit(__doc__.split("\n\n")[1])
        try:
            opts[a] = int(next(it))
        except (StopIteration, ValueError):
            sys.exit(f"fa3f_sched.py: {a} needs a whole number")
    B, T, H, G, sms, tail, split, cost = (opts[k] for k in ("-B", "-T", "-H", "-G", "--sms", "--tail-group",
                                                           "--split-heads", "--split-cost"))
    if B < 1 or H < 1 or G < 1 or sms < 1 or tail < 0 or split < 0 or cost < 0 or T < 128 or T % 128:
        sys.exit("fa3f_sched.py: B, H, G, --sms at least 1, T a multiple of 128, --tail-group, --split-heads, "
                 "--split-cost 0 or more")
    order = jobs(B, T, H, G, tail, split, cost)
    mean = sum(order) / sms
    m = makespan(order, sms)
    lpt = makespan(sorted(order, reverse=True), sms)
    print(f"blocks {len(order)} on {sms} SMs: mean {mean:.2f} tiles, busiest {m:.2f} (x{m / mean:.3f}); "
          f"longest first {lpt:.2f} (x{lpt / mean:.3f})")


if __name__ == "__main__":
    main()
