#!/bin/sh
# moe-fetch: the command-line contract (help, version, usage errors) and
# cat on the bundled demo corpus.
set -u
: "${MOE_BIN:?}" "${MOE_DATADIR:?}" "${MOE_SRCDIR:?}"
F="$MOE_BIN/moe-fetch"
tmp=$(mktemp -d) || exit 99
trap 'rm -rf "$tmp"' EXIT
fail=0
t() { # DESCRIPTION EXPECTED-STATUS command...
	d=$1
	want=$2
	shift 2
	"$@" > "$tmp/out" 2> "$tmp/err"
	rc=$?
	if [ "$rc" -eq "$want" ]; then
		echo "ok $d"
	else
		echo "not ok $d: exit $rc, wanted $want: $(head -c 300 "$tmp/err")"
		fail=1
	fi
}
t "--help exits 0" 0 "$F" --help
grep -q "^Usage: moe-fetch cat" "$tmp/out" || { echo "not ok help text"; fail=1; }
t "-V prints the version" 0 "$F" -V
grep -q "^moe-fetch (moe) " "$tmp/out" || { echo "not ok version text"; fail=1; }
t "no command is a usage error" 2 "$F"
grep -q "Try 'moe-fetch --help'" "$tmp/err" || { echo "not ok usage hint"; fail=1; }
t "unknown command" 2 "$F" frobnicate
t "unknown option" 2 "$F" cat --frob x
t "cat without files" 2 "$F" cat
t "bad --limit" 2 "$F" cat --limit -3 x.parquet
t "bad --min-score" 2 "$F" cat --min-score abc x.parquet
t "get without -o" 2 "$F" get some/repo
t "info without files" 2 "$F" info
t "missing file" 1 "$F" cat "$tmp/none.parquet"
grep -q "^moe-fetch: cannot open '$tmp/none.parquet': No such file" "$tmp/err" || { echo "not ok missing-file message: $(cat "$tmp/err")"; fail=1; }

demo="$MOE_DATADIR/demo/sample.parquet"
t "cat the demo corpus" 0 "$F" cat "$demo"
n=$(wc -l < "$tmp/out")
[ "$n" -eq 233 ] || { echo "not ok demo rows: $n"; fail=1; }
# every line is a JSON object with the FineWeb-edu fields
python3 - "$tmp/out" <<'PY' || fail=1
import json, sys
keys = ["text", "id", "dump", "url", "file_path", "language", "language_score",
        "token_count", "score", "int_score"]
for i, line in enumerate(open(sys.argv[1], encoding="utf-8")):
    d = json.loads(line)
    assert sorted(d) == sorted(keys), (i, list(d))
    assert isinstance(d["text"], str) and d["text"], i
    assert isinstance(d["int_score"], int) and isinstance(d["token_count"], int), i
print("ok demo rows are FineWeb-edu documents")
PY
t "cat --columns keeps the order" 0 "$F" cat --columns int_score,text -n 2 "$demo"
head -c 14 "$tmp/out" | grep -q '^{"int_score":' || { echo "not ok column order"; fail=1; }
[ "$(wc -l < "$tmp/out")" -eq 2 ] || { echo "not ok --limit 2"; fail=1; }
t "--limit across files" 0 "$F" cat -c id -n 300 "$demo" "$demo"
[ "$(wc -l < "$tmp/out")" -eq 300 ] || { echo "not ok --limit across files"; fail=1; }
t "cat - reads standard input" 0 sh -c "'$F' cat -c id,score - < '$demo'"
"$F" cat -c id,score "$demo" | cmp -s - "$tmp/out" || { echo "not ok stdin output differs"; fail=1; }
t "cat - of a non-Parquet stream" 1 sh -c "echo hello | '$F' cat -"
grep -q "^moe-fetch: <stdin>: not a Parquet file" "$tmp/err" || { echo "not ok stdin error: $(cat "$tmp/err")"; fail=1; }
if command -v script >/dev/null 2>&1; then
	script -qec "'$F' cat '$demo' > /dev/null" /dev/null > "$tmp/tty" 2>&1
	grep -q "cat 233 docs" "$tmp/tty" && echo "ok progress on a terminal" ||
		{ echo "not ok progress on a terminal: $(cat "$tmp/tty")"; fail=1; }
fi
"$F" cat "$demo" > /dev/null 2> "$tmp/err"
[ ! -s "$tmp/err" ] && echo "ok silent when stderr is not a terminal" || { echo "not ok cat stderr: $(cat "$tmp/err")"; fail=1; }
# memory is bounded by a row group, not the file: 40 MB in 40 row groups
python3 "$MOE_SRCDIR/tests/parquet/make-fallback.py" --big "$tmp/big.parquet" || exit 99
python3 - "$F" "$tmp/big.parquet" <<'PY' || fail=1
import os, resource, subprocess, sys
r = subprocess.run([sys.argv[1], "cat", sys.argv[2]], stdout=subprocess.PIPE)
lines = r.stdout.count(b"\n")
rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
size_mb = os.path.getsize(sys.argv[2]) / 1e6
assert r.returncode == 0 and lines == 8000, (r.returncode, lines)
assert rss_mb < 25, "peak RSS %.1f MB for a %.0f MB file" % (rss_mb, size_mb)
print("ok cat of a %.0f MB file in 40 row groups peaks at %.1f MB RSS" % (size_mb, rss_mb))
PY
# our snappy decoder (both builds) and libsnappy give the same documents
if [ -n "${MOE_SHARED:-}" ] && [ -d "$MOE_SHARED/data/parquet" ]; then
	n=0
	for p in "$MOE_SHARED"/data/parquet/*.parquet "$MOE_SHARED"/data/parquet/*/*.parquet; do
		case $p in *snappy*) ;; *) continue ;; esac
		MOE_PARQUET_SNAPPY=libsnappy "$F" cat "$p" > "$tmp/lib.jsonl" 2> /dev/null
		rl=$?
		for impl in "" bmi2; do
			MOE_PARQUET_SNAPPY=$impl "$F" cat "$p" > "$tmp/own.jsonl" 2> /dev/null
			ro=$?
			if [ "$ro" -ne "$rl" ] || ! cmp -s "$tmp/lib.jsonl" "$tmp/own.jsonl"; then
				echo "not ok snappy ${impl:-default} vs libsnappy on $(basename "$p"): exit $ro vs $rl"
				fail=1
			fi
		done
		n=$((n + 1))
	done
	[ "$n" -gt 3 ] && echo "ok $n snappy files decode as with libsnappy" ||
		{ echo "not ok only $n snappy files found"; fail=1; }
	# mapped chunks (MOE_PARQUET_MMAP=1, chunks of 1 MiB or more) read the same
	m=0
	for p in "$MOE_SHARED"/data/parquet/fineweb-shaped/*.parquet; do
		[ -f "$p" ] || continue
		"$F" cat "$p" > "$tmp/read.jsonl" 2> /dev/null
		MOE_PARQUET_MMAP=1 "$F" cat "$p" > "$tmp/map.jsonl" 2> /dev/null
		cmp -s "$tmp/read.jsonl" "$tmp/map.jsonl" && [ -s "$tmp/read.jsonl" ] ||
			{ echo "not ok MOE_PARQUET_MMAP=1 differs on $(basename "$p")"; fail=1; }
		m=$((m + 1))
	done
	[ "$m" -gt 0 ] && echo "ok $m FineWeb-shaped files read the same with mapped chunks"
fi
# the examples of moe-fetch(1)
t "man example: info" 0 "$F" info "$demo"
grep -q "^  text  *BYTE_ARRAY string  *optional ZSTD " "$tmp/out" || { echo "not ok info output: $(cat "$tmp/out")"; fail=1; }
t "man example: filtered documents" 0 sh -c "'$F' cat --min-int-score 3 --columns text,score '$demo' | head -n 5"
exit $fail
