#!/bin/sh
# Malformed files, unsupported encodings and codecs: moe-fetch cat fails
# with exit status 1 and one clear message naming the file (and the row
# group, column and page where the trouble is); it never crashes.
set -u
: "${MOE_BIN:?}" "${MOE_SRCDIR:?}"
D="${MOE_SHARED:-}/data/parquet"
[ -d "$D" ] || exit 77
tmp=$(mktemp -d) || exit 99
trap 'rm -rf "$tmp"' EXIT
fail=0
expect() { # FILE PATTERN [cat options]
	f=$1
	pat=$2
	shift 2
	"$MOE_BIN/moe-fetch" cat "$@" "$f" > "$tmp/out" 2> "$tmp/err"
	rc=$?
	msg=$(cat "$tmp/err")
	if [ $rc -ne 1 ]; then
		echo "not ok $(basename "$f"): exit status $rc: $msg"
		fail=1
	elif [ "$(wc -l < "$tmp/err")" -ne 1 ]; then
		echo "not ok $(basename "$f"): not one line: $msg"
		fail=1
	elif ! printf '%s' "$msg" | grep -q "^moe-fetch: $f: .*$pat"; then
		echo "not ok $(basename "$f"): '$msg' does not match '$pat'"
		fail=1
	else
		echo "ok $(basename "$f"): $msg"
	fi
}
loc="row group [0-9]*, column '[^']*', page [0-9]* (offset [0-9]*)"
expect "$D/delta_length_byte_array.parquet" "$loc: unsupported encoding DELTA_LENGTH_BYTE_ARRAY"
expect "$D/datapage_v2.snappy.parquet" "column 'b', page 0 .*: unsupported encoding DELTA_BINARY_PACKED"
expect "$D/lz4_raw_compressed_larger.parquet" "row group 0, column 'a', page 0 (offset 4): unsupported compression codec LZ4_RAW"
expect "$D/large_string_map.brotli.parquet" "not supported"
python3 "$MOE_SRCDIR/tests/parquet/make-fallback.py" "$tmp/fb" || exit 99
U="$tmp/fb/unsupported"
expect "$U/brotli.parquet" "$loc: unsupported compression codec BROTLI"
expect "$U/lz4.parquet" "$loc: unsupported compression codec LZ4"
expect "$U/lzo.parquet" "$loc: unsupported compression codec LZO"
expect "$U/delta-byte-array.parquet" "$loc: unsupported encoding DELTA_BYTE_ARRAY"
expect "$U/byte-stream-split.parquet" "$loc: unsupported encoding BYTE_STREAM_SPLIT"
expect "$D/rle-dict-uncompressed-corrupt-checksum.parquet" "$loc: page CRC mismatch"
expect "$D/nation.dict-malformed.parquet" "$loc: "
expect "$D/bad_data/PARQUET-1481.parquet" "schema leaf 'Handle' has bad type"
expect "$D/bad_data/ARROW-GH-41317.parquet" "row group 1, column 18"
expect "$D/bad_data/ARROW-GH-41321.parquet" "$loc: .*definition levels"
expect "$D/bad_data/ARROW-GH-45185.parquet" "repeated"
expect "$D/fineweb-shaped/sotu-snappy-v1.parquet" "no column 'nope'" --columns text,nope
expect "$D/binary.parquet" "no column 'score' to filter on" --min-score 1

# truncated and damaged copies of a good file: an error, never a crash
good="$D/fineweb-shaped/sotu-zstd-v2.parquet"
size=$(wc -c < "$good")
for cut in 0 3 11 100 5000 $((size / 2)) $((size - 9)) $((size - 1)); do
	head -c "$cut" "$good" > "$tmp/cut.parquet"
	expect "$tmp/cut.parquet" "."
done
# flip bytes in the footer and in the pages
python3 - "$good" "$tmp" <<'PY' || exit 99
import sys
data = bytearray(open(sys.argv[1], 'rb').read())
flen = int.from_bytes(data[-8:-4], 'little')
start = len(data) - 8 - flen
for i, off in enumerate([start + 5, start + 40, start + flen // 2, 4 + 10, 4 + 200, len(data) // 3]):
    d = bytearray(data)
    d[off] ^= 0x5a
    open('%s/flip%d.parquet' % (sys.argv[2], i), 'wb').write(d)
PY
for f in "$tmp"/flip*.parquet; do
	"$MOE_BIN/moe-fetch" cat "$f" > /dev/null 2> "$tmp/err"
	rc=$?
	if [ $rc -gt 1 ]; then
		echo "not ok $(basename "$f"): exit status $rc: $(cat "$tmp/err")"
		fail=1
	else
		echo "ok $(basename "$f"): exit $rc $(cat "$tmp/err")"
	fi
done
exit $fail
