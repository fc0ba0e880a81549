#!/bin/sh
# Session 15 (H100), call 108, the final code (76c7fba's kernels): test_backend
# whole and resume_gpu.sh (byte-identical checkpoints after a resume), the
# last of the session's device time.
set -u
. "$(dirname "$0")/common.sh"
echo "=== test_backend (all, timeout 100)"
tk 100 test_backend '*' | grep -E "cosine over|four steps|router merged|\[FAIL|Assert|Synthesis" | tail -24
echo "=== resume_gpu.sh"
MOE_BIN=$B/cmd MOE_BUILDDIR=$B MOE_SRCDIR=$PWD timeout 100 sh tests/train/resume_gpu.sh >/tmp/resume.out 2>&1
echo "rc=$?"
tail -3 /tmp/resume.out
date -u
