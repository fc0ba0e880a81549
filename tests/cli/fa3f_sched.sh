#!/bin/sh
# tests/bench/gpu/fa3f_sched.py (the model of fa3f's grid over the SMs) on
# cases worked out by hand, seed-base's figure (which Nsight Compute
# measured at 6.6%, session 23), and its argument errors.
TOOL=fa3f_sched.py
. "${MOE_SRCDIR:-.}/tests/cli/pytool.sh"
# T 256: two key blocks of 128, four query tiles of 64.  Block n = 1
# streams tiles 2-3 (1.5, the first half), n = 0 tiles 0-3 (3.5).  Two
# heads in one group: n = 1 of both, then n = 0 of both: 1.5, 1.5, 3.5,
# 3.5.  On 3 SMs: 1.5 | 1.5 | 3.5, the last 3.5 after a 1.5: busiest 5.0,
# mean 10 / 3; longest first: 3.5 | 3.5 | 1.5 + 1.5: 3.5.  On 2 SMs: 5, 5.
out=$(python3 "$P" -B 1 -T 256 -H 2 -G 2 --sms 3) || { echo "fa3f_sched.py failed"; fail=1; }
check "$out" "blocks 4 on 3 SMs: mean 3.33 tiles, busiest 5.00 (x1.500); longest first 3.50 (x1.050)"
out=$(python3 "$P" -B 1 -T 256 -H 2 -G 2 --sms 2) || { echo "fa3f_sched.py failed"; fail=1; }
check "$out" "blocks 4 on 2 SMs: mean 5.00 tiles, busiest 5.00 (x1.000)"
# groups of one head: 1.5, 3.5 (head 0), 1.5, 3.5 (head 1).  On 2 SMs:
# 1.5 | 3.5; the third after the first (free at 1.5: 3.0); the fourth on
# the SM free first, the same one (3.0 < 3.5): 6.5.  Busiest 6.5, mean 5.
out=$(python3 "$P" -B 1 -T 256 -H 2 -G 1 --sms 2) || { echo "fa3f_sched.py -G 1 failed"; fail=1; }
check "$out" "busiest 6.50 (x1.300)"
# --tail-group 2 with G 1: the two heads one group again, as -G 2
out=$(python3 "$P" -B 1 -T 256 -H 2 -G 1 --sms 2 --tail-group 2) || { echo "fa3f_sched.py --tail-group failed"; fail=1; }
check "$out" "busiest 5.00 (x1.000)"
# --split-heads 2: both heads' n = 0 blocks (3.5 > 4 / 2) as two of
# 3.5 / 2 + C.  C 0: 1.5, 1.5, then four of 1.75: on 3 SMs 1.5 | 1.5 |
# 1.75, then 1.75 after each (3.25, 3.25, 3.5): busiest 3.5, mean 10 / 3.
# C 1 (the default): four of 2.75: 1.5 | 1.5 | 2.75, then 4.25, 4.25, 5.5;
# mean 14 / 3.
out=$(python3 "$P" -B 1 -T 256 -H 2 -G 2 --sms 3 --split-heads 2 --split-cost 0) ||
	{ echo "fa3f_sched.py --split-heads failed"; fail=1; }
check "$out" "blocks 6 on 3 SMs: mean 3.33 tiles, busiest 3.50 (x1.050)"
out=$(python3 "$P" -B 1 -T 256 -H 2 -G 2 --sms 3 --split-heads 2) || { echo "fa3f_sched.py --split-heads failed"; fail=1; }
check "$out" "blocks 6 on 3 SMs: mean 4.67 tiles, busiest 5.50 (x1.179)"
# one head split: only head 1's n = 0 block (the last head)
out=$(python3 "$P" -B 1 -T 256 -H 2 -G 2 --sms 3 --split-heads 1 --split-cost 0) ||
	{ echo "fa3f_sched.py --split-heads 1 failed"; fail=1; }
check "$out" "blocks 5 on 3 SMs"
out=$(python3 "$P") || { echo "fa3f_sched.py (seed-base) failed"; fail=1; }
check "$out" "blocks 2048 on 132 SMs: mean 256.00 tiles, busiest 274.00 (x1.070)"
# seed-base with the last group's long blocks split: 3.1% below the
# unsplit 274.00, as a separate list-scheduling script written for the
# same question found (session 25)
out=$(python3 "$P" --split-heads 8) || { echo "fa3f_sched.py --split-heads 8 failed"; fail=1; }
check "$out" "blocks 2112 on 132 SMs: mean 256.97 tiles, busiest 265.50 (x1.033)"
out=$(python3 "$P" --split-cost -1 2>&1) && { echo "--split-cost -1 was accepted"; fail=1; }
check "$out" "--split-cost 0 or more"
out=$(python3 "$P" -T 100 2>&1) && { echo "T 100 was accepted"; fail=1; }
check "$out" "T a multiple of 128"
out=$(python3 "$P" -X 3 2>&1) && { echo "an unknown option was accepted"; fail=1; }
check "$out" "fa3f_sched.py [-B 16]"
out=$(python3 "$P" -B two 2>&1) && { echo "-B two was accepted"; fail=1; }
check "$out" "-B needs a whole number"
exit $fail
