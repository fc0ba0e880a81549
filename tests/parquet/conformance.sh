#!/bin/sh
# Values read by moe-fetch cat agree with an independent reader (hyparquet)
# on the apache/parquet-testing files, the FineWeb-shaped files and
# hand-built dictionary-fallback files.
set -u
: "${MOE_BIN:?}" "${MOE_SRCDIR:?}" "${MOE_BUILDDIR:?}"
src="$MOE_SRCDIR/tests/parquet"
D="${MOE_SHARED:-}/data/parquet"
[ -d "$D" ] || { echo "no $D"; exit 77; }
command -v python3 >/dev/null 2>&1 || exit 77
node_dir=$(sh "$src/setup-hyparquet.sh") || exit $?
tmp=$(mktemp -d) || exit 99
trap 'rm -rf "$tmp"' EXIT
python3 "$src/make-fallback.py" "$tmp/fb" || exit 99

fail=0
check() { # FILE [COLUMNS]
	f=$1
	name=$(basename "$f")
	if ! node "$node_dir/hyparquet-dump.mjs" "$f" ${2:-} > "$tmp/ref.jsonl" 2> "$tmp/ref.err"; then
		echo "not ok $name: reference reader failed: $(head -c 300 "$tmp/ref.err")"
		fail=1
		return
	fi
	if ! "$MOE_BIN/moe-fetch" cat ${2:+--columns "$2"} "$f" > "$tmp/out.jsonl" 2> "$tmp/out.err"; then
		echo "not ok $name: $(cat "$tmp/out.err")"
		fail=1
		return
	fi
	if res=$(python3 "$src/compare.py" "$tmp/ref.jsonl" "$tmp/out.jsonl"); then
		echo "ok $name ${2:+[$2] }$res"
	else
		echo "not ok $name: $res"
		fail=1
	fi
}

for f in alltypes_dictionary alltypes_plain alltypes_plain.snappy alltypes_tiny_pages \
	alltypes_tiny_pages_plain binary concatenated_gzip_members \
	datapage_v1-snappy-compressed-checksum datapage_v2_empty_datapage.snappy \
	int32_with_null_pages page_v2_empty_compressed plain-dict-uncompressed-checksum \
	rle-dict-snappy-checksum bad_data/ARROW-GH-43605 \
	fineweb-shaped/sotu-none-plain fineweb-shaped/sotu-snappy-v1 fineweb-shaped/sotu-zstd-v2; do
	check "$D/$f.parquet"
done
# v2 page with a null; the other columns use DELTA encodings (see errors.sh)
check "$D/datapage_v2.snappy.parquet" a
check "$D/fineweb-shaped/sotu-snappy-v1.parquet" text,id,score,int_score,token_count,language_score
for f in "$tmp"/fb/*.parquet; do
	check "$f"
done

# filters and --limit, against the reference rows filtered independently
filt() { # FILE CAT-OPTIONS...
	f=$1
	shift
	node "$node_dir/hyparquet-dump.mjs" "$f" > "$tmp/ref.jsonl" 2>/dev/null || { echo "not ok reference"; fail=1; return; }
	if ! "$MOE_BIN/moe-fetch" cat "$@" "$f" > "$tmp/out.jsonl" 2> "$tmp/out.err"; then
		echo "not ok $(basename "$f") $*: $(cat "$tmp/out.err")"
		fail=1
		return
	fi
	if res=$(python3 "$src/compare.py" "$@" "$tmp/ref.jsonl" "$tmp/out.jsonl"); then
		echo "ok $(basename "$f") $*: $res"
	else
		echo "not ok $(basename "$f") $*: $res"
		fail=1
	fi
}
filt "$D/fineweb-shaped/sotu-snappy-v1.parquet" --min-score 2.7
filt "$D/fineweb-shaped/sotu-zstd-v2.parquet" --min-int-score 3
filt "$D/fineweb-shaped/sotu-zstd-v2.parquet" --min-int-score 2 --min-score 2.6 --limit 40
filt "$D/fineweb-shaped/sotu-none-plain.parquet" --limit 150
for f in "$tmp"/fb/*.parquet; do
	filt "$f" --min-score 2.5
	filt "$f" --min-int-score 3 --limit 9
done
exit $fail
