#!/bin/sh
# Session 4: the memory-bound kernels (kernels/rmsnorm.cu, qknorm_rope.cu,
# permute.cu, xent.cu) on the GPU machine: test_kernels (all of it) and
# test_backend, the kernel table (bench_kernels -m: the previous kernels and
# the new ones in the same run, each against a device-to-device copy of the
# same bytes), seed-base steps with the new kernels and with
# MOE_CUDA_MEMK=legacy (the previous ones), interleaved, and one profiled
# step of each; a summary last.  (Call 2 of the log also ran steps with
# MOE_CUDA_MEMK=pf, prefetching variants since removed as no faster.)
#   RUNDIR=.devrunmem sh .devrunmem/run_mem4.sh
# The tests' full output goes to $OUT/mem-tests.log.
set -u
RUNDIR=${RUNDIR:-.devrunmem}
. "$(dirname "$0")/common.sh"
L=${OUT:-/tmp}/mem-tests.log
echo "=== test_kernels (full output in mem-tests.log)"
LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 100 $B/tests/kernels/test_kernels --verbose >$L 2>&1
echo "exit $?"
grep -E "FAIL|PASS|Synthesis|rror" $L | grep -v "relative error" | tail -30
echo "largest relative errors (over tolerance) of the memory-bound kernels' checks:"
grep -E "relative error" $L | grep -iE "qknorm|rmsnorm|combine|scatter|gather|xent" |
	sed 's/.*: relative error \([^ ]*\) (tolerance \([^)]*\)).*/\1 \2 &/' | awk '{ print $1 / ($2 > 0 ? $2 : 1e-30), $0 }' |
	sort -g | tail -4 | cut -d' ' -f4-
gpu_test test_backend "cosine over|PASS|FAIL|Synthesis" 10
echo "=== bench_kernels -m -B 16"
timeout 60 $B/tests/bench/bench_kernels -m -B 16 >/tmp/memk.txt 2>&1
echo "exit $?"
cat /tmp/memk.txt
: >/tmp/steps.txt
for v in new legacy new legacy; do
	echo "=== bench_cuda ($v kernels)" | tee -a /tmp/steps.txt
	case $v in
	new) bc ;;
	*) MOE_CUDA_MEMK=$v bc ;;
	esac | tee -a /tmp/steps.txt
done
OPS="qknorm|rmsnorm|combine|scatter|xent|gather|total|wall"
echo "=== profile (new kernels)"
profile "$OPS"
echo "=== profile (MOE_CUDA_MEMK=legacy)"
MOE_CUDA_MEMK=legacy profile "$OPS"
echo "=== summary"
cat /tmp/memk.txt
grep -E "===|step_ms" /tmp/steps.txt | sed 's/.*"step_ms": \([^,]*\), "median_ms": \([^,]*\),.*/  step_ms \1 median_ms \2/'
date -u
