#!/bin/sh
# Session 18 (H200), call 134: an experiment build (s18-held-adamw.patch on 09bd538: the
# multiprocessor reserve of call 132, MOE_CUDA_SM_RESERVE, + AdamW's vector
# kernel held to MOE_CUDA_ADAMW_SMS multiprocessors, one 1,024-thread block
# each, as adamw_probe's reg kernel): traces of one stream, the default and
# reserve 24 with AdamW held to 24; the AdamW and step tests with both
# switches; seed-base steps interleaved.  Everything in $OUT/run134.txt.
set -u
. "$(dirname "$0")/common.sh"
O=${OUT:-/tmp}
H24="MOE_CUDA_SM_RESERVE=24 MOE_CUDA_ADAMW_SMS=24"
{
echo "=== tests with $H24"
env $H24 tk 60 test_kernels 'kernels/adamw*' | grep -E "\[FAIL|Assert|Synthesis"
env $H24 tk 90 test_backend '*' | grep -E "\[FAIL|Assert|Synthesis"
echo "=== traces"
ktr k134-os0 MOE_CUDA_OPT_STREAM=0
ktr k134-def X=1
ktr k134-h24 $H24
echo "=== steps"
for i in 1 2; do
	bc_as def X=1
	bc_as os0 MOE_CUDA_OPT_STREAM=0
	bc_as h16 "MOE_CUDA_SM_RESERVE=16 MOE_CUDA_ADAMW_SMS=16"
	bc_as h24 "$H24"
	bc_as h32 "MOE_CUDA_SM_RESERVE=32 MOE_CUDA_ADAMW_SMS=32"
	bc_as h48 "MOE_CUDA_SM_RESERVE=48 MOE_CUDA_ADAMW_SMS=48"
	bc_as a32 "MOE_CUDA_ADAMW_SMS=32"
done
} >$O/run134.txt 2>&1
grep -E "^=== |\[FAIL|Assert|Synthesis|steps in trace|step_ms" $O/run134.txt |
	sed 's/"model".*"step_ms"/"step_ms"/; s/"tflops".*"loss"/"loss"/' | tail -45
date -u
