#!/bin/sh
# Session 23 (H200), call 170: where one step of the current code goes
# (kernel traces of the default path and of one stream, step 3 of each:
# ktrace.py --parts), the default against one stream (AdamW not beside the
# next forward) interleaved, and the ratio to torch_ref on this card.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
ktr ktrace-s23-default
ktr ktrace-s23-onestream MOE_CUDA_OPT_STREAM=0
bc
bc_as onestream MOE_CUDA_OPT_STREAM=0
torch_seed
bc
bc_as onestream MOE_CUDA_OPT_STREAM=0
for t in default onestream; do
	echo "=== parts: $t"
	python3 $R/ktrace.py $O/ktrace-s23-$t.csv.gz 3 --parts --top 16
done
} >$O/run170.txt 2>&1
cat $O/run170.txt
date -u
