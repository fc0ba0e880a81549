#!/bin/sh
# tests/bench/gpu/sass_mix.py (the opcode mix and stalls of a kernel from
# Nsight Compute's source page as CSV) on a small file worked out by hand,
# gzipped too, and its errors.
TOOL=sass_mix.py
. "${MOE_SRCDIR:-.}/tests/cli/pytool.sh"
# five lines: 600 instructions, 100 samples.  LOP3 twice (one predicated):
# 300 + 100 = 400 (66.7%), samples 10 + 0 (10.0%); HGMMA 100 (16.7%), 30
# samples; the wait 50 (8.3%), 5; the branch after it 50, 55 samples.
cat >"$T/k.csv" <<'CSV'
"Kernel Name","void k(int)",
"Address","Source","Warp Stall Sampling (All Samples)","Warp Stall Sampling (Not-issued Samples)","# Samples","Instructions Executed"
"0x0","HGMMA.64x256x16.F32.BF16 R24, gdesc[UR16], R24","30","0","30","100"
"0x10","@!P0  LOP3.LUT R1, R2, 0x1, RZ, 0xc0, !PT","10","0","10","300"
"0x20","LOP3.LUT R3, R4, 0x1, RZ, 0xc0, !PT","0","0","0","100"
"0x30","SYNCS.PHASECHK.TRANS64.TRYWAIT P1, [UR8], R2","5","0","5","50"
"0x40","@!P1  BRA 0x100","55","0","55","50"
CSV
out=$(python3 "$P" "$T/k.csv" --lines 3:5 --waits) || { echo "sass_mix.py failed"; fail=1; }
check_squeezed "$out" "5 SASS lines, 600 warp instructions executed, 100 warp-state samples"
check_squeezed "$out" "LOP3 400 66.7% 10.0%"
check_squeezed "$out" "HGMMA 100 16.7% 30.0%"
check_squeezed "$out" "BRA 50 8.3% 55.0%"
check_squeezed "$out" "lines 3:5: 100 instructions (16.7%), 60 samples (60.0%)"
check_squeezed "$out" "3 50 55 SYNCS.PHASECHK.TRANS64.TRYWAIT P1, [UR8], R2"
gzip -c "$T/k.csv" >"$T/k.csv.gz"
out=$(python3 "$P" "$T/k.csv.gz" --top 1) || { echo "sass_mix.py on .gz failed"; fail=1; }
check_squeezed "$out" "LOP3 400 66.7% 10.0%"
case $out in *HGMMA*) echo "--top 1 printed a second opcode"; fail=1 ;; esac
# errors: one line, a named file, where
out=$(python3 "$P" "$T/k.csv" --lines 4:9 2>&1) && { echo "--lines 4:9 was accepted"; fail=1; }
check_squeezed "$out" "--lines 4:9: outside 0:5"
out=$(python3 "$P" "$T/k.csv" --lines x 2>&1) && { echo "--lines x was accepted"; fail=1; }
check_squeezed "$out" "--lines needs A:B"
sed 's/"300"$/"lots"/' "$T/k.csv" >"$T/bad.csv"
out=$(python3 "$P" "$T/bad.csv" 2>&1) && { echo "a bad count was accepted"; fail=1; }
check_squeezed "$out" "bad.csv: line 4: not a count: 'lots'"
printf 'a,b\n1,2\n' >"$T/nohdr.csv"
out=$(python3 "$P" "$T/nohdr.csv" 2>&1) && { echo "a file without the header was accepted"; fail=1; }
check_squeezed "$out" "nohdr.csv: no header with 'Source' and 'Instructions Executed'"
out=$(python3 "$P" "$T/missing.csv" 2>&1) && { echo "a missing file was accepted"; fail=1; }
check_squeezed "$out" "missing.csv"
exit $fail
