#!/bin/sh
# tests/bench/gpu/ktrace.py (the summary of a ktrace.c trace) on a small
# made-up trace whose busy time, idle time and gaps are worked out by hand
# below, its --parts breakdown of a gzipped one, and its errors for a
# malformed line and for a trace without two steps.
TOOL=ktrace.py
. "${MOE_SRCDIR:-.}/tests/cli/pytool.sh"
# ns: step 0 = [1000, 9000): embedding 1000-2000, k1 2500-5000 with k2
# inside it, a memset 6000-7000: busy 1000 + 2500 + 1000 = 4500 of 8000
# (43.8% idle), gaps 500, 1000, 2000 (mean 1.17 us).  Step 1 = [9000,
# 20000): embedding 9000-10000, k3 10000-12000 (no gap), a memcpy
# 13000-14000, then 6000 idle up to step 2: busy 4000 of 11000 (63.6%
# idle), gaps 1000 and 6000 (mean 3.50 us).
cat >"$T/kt.csv" <<'CSV'
1000,2000,0,embedding_fwd_kernel(x)
2500,5000,0,k1<int>(a;b)
4000,4500,0,k2
6000,7000,1,memset
9000,10000,0,embedding_fwd_kernel(x)
10000,12000,0,k3
13000,14000,2,memcpy
20000,21000,0,embedding_fwd_kernel(x)
CSV
out=$(python3 "$P" "$T/kt.csv") || { echo "ktrace.py failed"; fail=1; }
check "$out" "steps in trace: 2 full; step 1:"
check "$out" "idle 0.01 ms (63.6%)"
check "$out" "kernels 2, memsets 0, memcpys 1; gaps 2, mean 3.50 us"
check "$out" "gaps 4-10us: 0.006 ms"
out=$(python3 "$P" "$T/kt.csv" 0) || { echo "ktrace.py step 0 failed"; fail=1; }
check "$out" "(43.8%)"
check "$out" "kernels 3, memsets 1, memcpys 0; gaps 3, mean 1.17 us"
check "$out" "gaps   <1us: 0.001 ms"
check "$out" "gaps  2-4us: 0.002 ms"
# --parts on a made-up step [0, 10000): embedding 0-500 (the rest), an
# AdamW kernel 500-3500 beside a grouped forward GEMM 1000-3000, an
# attention backward 4000-6000, the cross-entropy 6000-7000: AdamW 3000 ns
# of 10000 (30.0%), the forward 6000 ns (0.01 ms), gzipped as the
# committed traces are
cat >"$T/parts.csv" <<'CSV'
0,500,0,embedding_fwd_kernel(x)
500,3500,0,_Z13adamw4_kernelILb1EEv
1000,3000,0,_Z9gt_kernelILi0ELi128E
4000,6000,0,_Z25attention_bwd_fa3f_kernel
6000,7000,0,_Z16xent_smem_kernel
10000,10500,0,embedding_fwd_kernel(x)
CSV
gzip -k "$T/parts.csv"
out=$(python3 "$P" "$T/parts.csv.gz" --parts --top 2) || { echo "ktrace.py --parts failed"; fail=1; }
check "$out" "step 0 of 1, span 0.01 ms"
check "$out" "0.00  30.0%  AdamW"
check "$out" "0.00  20.0%  attention backward"
check "$out" "0.00  20.0%  expert GEMMs: forward"
check "$out" "0.00  10.0%  cross-entropy"
check "$out" "0.00   5.0%  the rest: embedding_fwd_kernel"
check "$out" "AdamW: 1 kernels from 0.00 to 0.00 ms, 1 of 1 started before the cross-entropy"
check "$out" "the 2 longest kernels"
printf '1,2,0,a\nnot a line\n' >"$T/bad.csv"
if python3 "$P" "$T/bad.csv" >"$T/err" 2>&1; then
	echo "a malformed trace was accepted"
	fail=1
fi
check "$(cat "$T/err")" "bad.csv:2: not a ktrace line"
head -2 "$T/kt.csv" >"$T/one.csv"
if python3 "$P" "$T/one.csv" >"$T/err" 2>&1; then
	echo "a trace of one step was accepted"
	fail=1
fi
check "$(cat "$T/err")" "fewer than two steps"
exit $fail
