#!/bin/sh
# Lint every man page with mandoc; any warning fails the test.
set -u
cd "${MOE_SRCDIR:-.}/man" || exit 99
pages=$(ls *.[157] 2>/dev/null)
[ -n "$pages" ] || exit 77
out=$(mandoc -Tlint -W warning $pages 2>&1)
if [ -n "$out" ]; then
	printf '%s\n' "$out"
	exit 1
fi
exit 0
