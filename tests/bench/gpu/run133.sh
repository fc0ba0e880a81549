#!/bin/sh
# Session 18 (H200), call 133: adamw_probe.cu (built by hand, carried as
# ap): AdamW held to k multiprocessors, register loads against bulk copies
# through shared memory, alone and beside the gate_up forward GEMM on the
# other multiprocessors.  Output in $OUT/run133.txt, printed whole.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
LD_LIBRARY_PATH=$R/lib timeout 300 $R/ap >$O/run133.txt 2>&1
echo "rc=$?" >>$O/run133.txt
cat $O/run133.txt
date -u
