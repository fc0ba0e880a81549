#!/bin/sh
# Session 16 (H100), call 116: backend/shared_experts_merged_match, which
# failed in call 115, alone with all its output.
set -u
. "$(dirname "$0")/common.sh"
tk 60 test_backend 'backend/shared_experts_merged_match' | grep -v "^\[----\] Criterion" | tail -30
date -u
