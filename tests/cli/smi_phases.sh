#!/bin/sh
# tests/bench/gpu/smi_phases.py (the card's clock and power by phase of a
# device script) on made-up nvidia-smi samples whose per-phase figures are
# worked out by hand below, with --min-watts and --utc-offset, gzipped
# input, and its errors for a malformed sample, a malformed phase line and
# a phase without an end.
TOOL=smi_phases.py
. "${MOE_SRCDIR:-.}/tests/cli/pytool.sh"
# 2026-11-28 12:00:00 UTC is 1795867200.  Phase a: 12:00:00.0-12:00:00.35
# (samples at .0, .1, .2, .3: clocks 1980, 1500, 1600, 1700 -> mean 1695;
# power 100, 690, 700, 650 -> mean 535, max 700; with --min-watts 600 the
# last three: mean 1600, power mean 680).  Phase b: 12:00:01.0-12:00:01.1
# (samples .0 and .1: 1900, 1800 -> mean 1850; 300, 310 -> mean 305).
cat >"$T/s.csv" <<'CSV'
2026/11/28 12:00:00.000, 1980, 3201, 100.00, 40, 0x0000000000000000
2026/11/28 12:00:00.100, 1500, 3201, 690.00, 50, 0x0000000000000004
2026/11/28 12:00:00.200, 1600, 3201, 700.00, 52, 0x0000000000000004
2026/11/28 12:00:00.300, 1700, 3201, 650.00, 51, 0x0000000000000004
2026/11/28 12:00:00.500, 1980, 3201, 90.00, 45, 0x0000000000000001
2026/11/28 12:00:01.000, 1900, 3201, 300.00, 46, 0x0000000000000000
2026/11/28 12:00:01.100, 1800, 3201, 310.00, 47, 0x0000000000000000
CSV
cat >"$T/p.txt" <<'TXT'
a-start 1795867200.0
a-end 1795867200.35
b-start 1795867201.0
b-end 1795867201.1
TXT
out=$(python3 "$P" "$T/s.csv" "$T/p.txt") || { echo "smi_phases.py failed"; fail=1; }
check "$out" "a                          4         1695  1500  1980           535   700    52  0x0000000000000000 0x0000000000000004"
check "$out" "b                          2         1850  1800  1900           305   310    47  0x0000000000000000"
gzip -k "$T/s.csv"
out=$(python3 "$P" "$T/s.csv.gz" "$T/p.txt" --min-watts 600) || { echo "smi_phases.py --min-watts failed"; fail=1; }
check "$out" "a                          3         1600  1500  1700           680   700    52  0x0000000000000004"
check "$out" "b                          0  (no samples)"
# the samples read as one hour east of UTC: 12:00 there is 11:00 UTC, so
# phase a's window (12:00:00 UTC) finds none of them
out=$(python3 "$P" "$T/s.csv" "$T/p.txt" --utc-offset 1) || { echo "smi_phases.py --utc-offset failed"; fail=1; }
check "$out" "a                          0  (no samples)"
printf '2026/11/28 12:00:00.000, 1980\n' >"$T/bad.csv"
out=$(python3 "$P" "$T/bad.csv" "$T/p.txt" 2>&1) && { echo "a short sample line was accepted"; fail=1; }
check "$out" "bad.csv:1: not an nvidia-smi sample line"
printf 'a-start 1795867200.0\na-begin 1795867200.2\n' >"$T/bad.txt"
out=$(python3 "$P" "$T/s.csv" "$T/bad.txt" 2>&1) && { echo "a bad phase name was accepted"; fail=1; }
check "$out" "bad.txt:2: 'a-begin' ends in neither -start nor -end"
printf 'a-start 1795867200.0\n' >"$T/open.txt"
out=$(python3 "$P" "$T/s.csv" "$T/open.txt" 2>&1) && { echo "a phase without an end was accepted"; fail=1; }
check "$out" "phase 'a' has a start and no end"
out=$(python3 "$P" "$T/nothere.csv" "$T/p.txt" 2>&1) && { echo "a missing file was accepted"; fail=1; }
check "$out" "nothere.csv: No such file or directory"
exit $fail
