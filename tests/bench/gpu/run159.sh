#!/bin/sh
# Session 21 (H200), call 159: where a step of the committed code goes on
# this session's card: ktrace of the default path and of one stream
# (MOE_CUDA_OPT_STREAM=0), each summarised by ktrace.py --parts.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
{
for v in default onestream; do
	echo "=== ktrace $v"
	if [ $v = default ]; then ktr ktrace-s21-$v X=; else ktr ktrace-s21-$v MOE_CUDA_OPT_STREAM=0; fi
	python3 $R/ktrace.py $O/ktrace-s21-$v.csv.gz 3 --parts 2>&1 | head -40
done
} >$O/run159.txt 2>&1
cat $O/run159.txt
date -u
