#!/bin/sh
# Written in session 4 for the next session (not run yet): the optimizer
# stream's test (test_backend optimizer_overlap_same_steps) N times with the
# stream against one stream, and N times one stream against one stream
# (MOE_TEST_OVERLAP_CONTROL=1).  If the control fails about as often, the
# stream is cleared and the cause is run-to-run nondeterminism (fp32 atomics
# flipping near-tied routing choices); if only the stream fails, it has an
# ordering bug.  Prints each run's verdict and the failing runs' lines.
set -u
. "$(dirname "$0")/common.sh"
N=${N:-20}
for mode in stream control; do
	fails=0
	i=0
	while [ $i -lt $N ]; do
		i=$((i + 1))
		if [ $mode = control ]; then export MOE_TEST_OVERLAP_CONTROL=1; else unset MOE_TEST_OVERLAP_CONTROL; fi
		LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 60 $B/tests/kernels/test_backend --verbose -j1 \
			--filter 'backend/optimizer_overlap_same_steps' >/tmp/ov.txt 2>&1
		if grep -q "Failing: 0" /tmp/ov.txt; then
			echo "$mode run $i: pass"
		else
			fails=$((fails + 1))
			echo "$mode run $i: FAIL"
			grep -E "step [0-9]:|differ|optimizer stream vs" /tmp/ov.txt | head -20
		fi
	done
	echo "=== $mode: $fails of $N failed"
done
date -u
