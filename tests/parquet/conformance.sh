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
# what to compare: FILE [COLUMNS] [CAT-FILTER-OPTIONS...]; references are
# dumped by one node process, then each moe-fetch cat output is compared
n=0
: > "$tmp/list"
: > "$tmp/cases"
add() {
	n=$((n + 1))
	f=$1
	cols=${2:-}
	shift
	[ $# -gt 0 ] && shift
	printf '%s\t%s\t%s\n' "$f" "$cols" "$tmp/ref$n.jsonl" >> "$tmp/list"
	printf '%s|%s|%s|%s\n' "$n" "$f" "$cols" "$*" >> "$tmp/cases"
}
for f in alltypes_dictionary alltypes_plain alltypes_plain.snappy alltypes_tiny_pages \
	alltypes_tiny_pages_plain binary concatenated_gzip_members \
	datapage_v1-snappy-compressed-checksum datapage_v2_empty_datapage.snappy \
	int32_with_null_pages page_v2_empty_compressed plain-dict-uncompressed-checksum \
	rle-dict-snappy-checksum bad_data/ARROW-GH-43605 \
	fineweb-shaped/sotu-none-plain fineweb-shaped/sotu-snappy-v1 fineweb-shaped/sotu-zstd-v2; do
	add "$D/$f.parquet"
done
# v2 page with a null; the other columns use DELTA encodings (see errors.sh)
add "$D/datapage_v2.snappy.parquet" a
add "$D/fineweb-shaped/sotu-snappy-v1.parquet" text,id,score,int_score,token_count,language_score
for f in "$tmp"/fb/*.parquet; do
	add "$f"
done
# filters and --limit, checked against the reference rows filtered by compare.py
add "$D/fineweb-shaped/sotu-snappy-v1.parquet" "" --min-score 2.7
add "$D/fineweb-shaped/sotu-zstd-v2.parquet" "" --min-int-score 3
add "$D/fineweb-shaped/sotu-zstd-v2.parquet" "" --min-int-score 2 --min-score 2.6 --limit 40
add "$D/fineweb-shaped/sotu-none-plain.parquet" "" --limit 150
for f in "$tmp"/fb/*.parquet; do
	add "$f" "" --min-score 2.5
	add "$f" "" --min-int-score 3 --limit 9
done

node "$node_dir/hyparquet-dump.mjs" --batch "$tmp/list" || { echo "the reference reader failed"; exit 1; }
while IFS='|' read -r i f cols opts; do
	name="$(basename "$f")${cols:+ [$cols]}${opts:+ $opts}"
	if [ -f "$tmp/ref$i.jsonl.err" ]; then
		echo "not ok $name: reference reader failed: $(head -c 300 "$tmp/ref$i.jsonl.err")"
		fail=1
		continue
	fi
	# shellcheck disable=SC2086
	if ! "$MOE_BIN/moe-fetch" cat ${cols:+--columns "$cols"} $opts "$f" > "$tmp/out.jsonl" 2> "$tmp/out.err"; then
		echo "not ok $name: $(cat "$tmp/out.err")"
		fail=1
		continue
	fi
	# shellcheck disable=SC2086
	if res=$(python3 "$src/compare.py" $opts "$tmp/ref$i.jsonl" "$tmp/out.jsonl"); then
		echo "ok $name: $res"
	else
		echo "not ok $name: $res"
		fail=1
	fi
done < "$tmp/cases"
# moe-fetch info: the footer as hyparquet reads it (also for files whose
# data moe-fetch refuses)
for f in alltypes_tiny_pages alltypes_plain.snappy datapage_v2.snappy delta_length_byte_array \
	lz4_raw_compressed_larger large_string_map.brotli concatenated_gzip_members \
	rle-dict-snappy-checksum fineweb-shaped/sotu-snappy-v1 fineweb-shaped/sotu-zstd-v2; do
	node "$node_dir/hyparquet-dump.mjs" --meta "$D/$f.parquet" > "$tmp/meta.json" 2>&1 ||
		{ echo "not ok $f: reference: $(head -c 300 "$tmp/meta.json")"; fail=1; continue; }
	if ! "$MOE_BIN/moe-fetch" info "$D/$f.parquet" > "$tmp/info.txt" 2> "$tmp/out.err"; then
		echo "not ok info $f: $(cat "$tmp/out.err")"
		fail=1
	elif res=$(python3 "$src/compare.py" --info "$tmp/meta.json" "$tmp/info.txt"); then
		echo "ok info $f: $res"
	else
		echo "not ok info $f: $res"
		fail=1
	fi
done
exit $fail
