#!/bin/sh
# Session 25 (H200), call 189: where one step of the session's final code
# goes (a kernel trace of the default path, step 3: ktrace.py --parts), and
# the final code beside torch_ref twice (ours, torch_ref, ours, torch_ref,
# ours) for a second card's ratio.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
ktr ktrace-s25-default
bc
torch_seed
bc
torch_seed
bc
echo "=== parts: default"
python3 $R/ktrace.py $O/ktrace-s25-default.csv.gz 3 --parts --top 40
} >$O/run189.txt 2>&1
cat $O/run189.txt
date -u
