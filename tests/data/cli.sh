#!/bin/sh
# moe-shard as a tool: round trips (files, pipes, --compress, several
# inputs), the split options, bad input (exit 1, nothing partial left),
# usage errors (exit 2), info/verify/cat, and the man page EXAMPLES.
set -u
BIN=${MOE_BIN:?}
MK=${MOE_BUILDDIR:?}/tests/data/mkstream
SHARD=$BIN/moe-shard
T=$(mktemp -d "${TMPDIR:-/tmp}/moe-shard-cli.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1
fails=0
n=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); fails=$((fails + 1)); echo "not ok $n - $1"; }
check() { # check DESCRIPTION COMMAND...
	d=$1; shift
	if "$@" >/dev/null 2>"$T/err"; then ok "$d"; else not_ok "$d"; sed 's/^/# /' "$T/err"; fi
}
# expect_fail DESCRIPTION STATUS PATTERN COMMAND...: exits STATUS, stderr matches PATTERN
expect_fail() {
	d=$1; want=$2; pat=$3; shift 3
	"$@" >/dev/null 2>"$T/err"; rc=$?
	if [ "$rc" -eq "$want" ] && grep -q -- "$pat" "$T/err" && [ "$(wc -l <"$T/err")" -le 2 ]; then
		ok "$d"
	else
		not_ok "$d (exit $rc, want $want /$pat/)"; sed 's/^/# /' "$T/err"
	fi
}
# no temporaries beside outputs
clean_dir() { ! ls -A . | grep -q '^\.'; }

"$MK" -s 1 -n 400 -e 50279 -l 400 >a.tok || exit 99
"$MK" -s 1 -n 400 -e 50279 -l 400 -T >a.ids || exit 99
"$MK" -s 2 -n 300 -e 50279 -l 400 >b.tok || exit 99
"$MK" -s 2 -n 300 -e 50279 -l 400 -T >b.ids || exit 99

# round trips
check "shard a file" "$SHARD" -o d1 --val-docs 40 --shard-size 20k a.tok
check "cat gives the stream back byte for byte" sh -c "'$SHARD' cat d1 | cmp - a.tok"
check "cat --format ids matches the reference ids" sh -c "'$SHARD' cat --format ids d1 | cmp - a.ids"
head -n 40 a.ids >v40; tail -n +41 a.ids >t360
check "val split is the first 40 documents" sh -c "'$SHARD' cat --split val --format ids d1 | cmp - v40"
check "train split is the rest" sh -c "'$SHARD' cat --split train --format ids d1 | cmp - t360"
check "several shard files" test -f d1/train-00003.shard
check "verify" "$SHARD" verify d1
check "options before the subcommand" "$SHARD" -q verify d1
check "through a pipe with --compress" sh -c "cat a.tok | '$SHARD' -o d2 --compress --block-size 1000 && '$SHARD' cat d2 | cmp - a.tok"
check "--compress=19 and a fraction split" sh -c "'$SHARD' -o d3 --compress=19 --val-fraction 0.25 --seed 3 < a.tok && '$SHARD' verify d3 && '$SHARD' cat d3 | cmp - a.tok"
check "fraction split is roughly a quarter" sh -c "v=\$('$SHARD' cat --split val --format ids d3 | wc -l); [ \$v -gt 60 ] && [ \$v -lt 140 ]"
check "same seed, same split" sh -c "'$SHARD' -o d3b --val-fraction 0.25 --seed 3 a.tok && '$SHARD' cat --split val --format ids d3 | cmp - /dev/stdin <<EOF
\$('$SHARD' cat --split val --format ids d3b)
EOF"
check "two inputs concatenate" sh -c "'$SHARD' -o d4 a.tok - < b.tok && '$SHARD' cat --format ids d4 | cmp - /dev/stdin <<EOF
\$(cat a.ids b.ids)
EOF"
"$MK" -s 5 -n 50 -V 70000 -l 100 >w.tok
check "uint32 tokens when the vocabulary needs them" sh -c "'$SHARD' -o d5 w.tok && '$SHARD' info --json d5 | grep -q '\"token_width\": 4' && '$SHARD' cat d5 | cmp - w.tok"
"$MK" -s 6 -n 0 >empty.tok
check "an empty stream gives an empty directory index" sh -c "'$SHARD' -o d6 empty.tok && '$SHARD' verify d6 && '$SHARD' cat d6 | cmp - empty.tok"
check "info" sh -c "'$SHARD' info d1 | grep -q '^val .*40 documents'"
check "info --json is JSON with the counts" sh -c "'$SHARD' info --json d1 | grep -q '\"docs\": 360'"
check "info on a stream" sh -c "'$SHARD' info a.tok | grep -q '^documents: *400 '"
check "info --json on a stream" sh -c "'$SHARD' info --json - <a.tok | grep -q '\"documents\": 400'"
check "verify a stream" sh -c "'$SHARD' verify a.tok | grep -q ': OK'"
# the on-disk layout of moe-shard(5) and moe-tokstream(5), read with od(1)
# instead of the library: uint16 ids at offset 192 of an uncompressed shard
vt=$(sed -n '/"val"/,$p' d1/index.json | sed -n 's/.*"tokens": \([0-9]*\).*/\1/p' | head -n 1)
od -An -v -tu2 -j192 -N $((2 * vt)) d1/val-00000.shard | tr -s ' ' '\n' | sed '/^$/d' >od.ids
tr ' ' '\n' <v40 | sed '/^$/d' >v40.one
check "val shard holds its ids as uint16 at offset 192 ($vt tokens)" cmp od.ids v40.one
check "shard magic and header size" sh -c "[ \"\$(od -An -c -N7 d1/val-00000.shard | tr -d ' ')\" = MOESHRD ] && [ \$(od -An -tu4 -j12 -N4 d1/val-00000.shard) -eq 192 ]"
"$MK" -s 4 -n 1 -l 50 -V 300 >one.tok
"$MK" -s 4 -n 1 -l 50 -V 300 -T | tr ' ' '\n' >one.ids
n1=$(wc -l <one.ids)
od -An -v -tu2 -j104 -N $((2 * n1)) one.tok | tr -s ' ' '\n' | sed '/^$/d' >one.od
check "stream: one record of $n1 uint16 ids after a 96-byte header" sh -c "cmp one.od one.ids && [ \$(od -An -tu4 -j96 -N4 one.tok) -eq $n1 ]"
check "no temporaries left" clean_dir

# bad input: exit 1, clear message, nothing written
size=$(wc -c <a.tok)
head -c $((size - 5)) a.tok >trunc.tok
expect_fail "truncated stream" 1 "truncated at offset" "$SHARD" -o bad1 trunc.tok
check "nothing left after a truncated stream" sh -c "[ ! -e bad1 ]"
head -c 50000 a.tok | "$SHARD" -o bad2 2>/dev/null; rc=$?
check "truncated pipe exits 1" test "$rc" -eq 1
check "nothing left after a truncated pipe" sh -c "[ ! -e bad2 ]"
cp a.tok flip.tok
printf 'Z' | dd of=flip.tok bs=1 seek=5000 conv=notrunc 2>/dev/null
expect_fail "corrupted stream" 1 "checksum mismatch" "$SHARD" -o bad3 flip.tok
check "nothing left after a corrupted stream" sh -c "[ ! -e bad3 ]"
cp a.tok ver.tok
printf '\002' | dd of=ver.tok bs=1 seek=8 conv=notrunc 2>/dev/null
expect_fail "wrong version" 1 "version" "$SHARD" -o bad4 ver.tok
expect_fail "not a token stream" 1 "bad magic" "$SHARD" -o bad5 a.ids
expect_fail "verify a truncated stream" 1 "truncated" "$SHARD" verify trunc.tok
expect_fail "inputs that disagree" 1 "differ from" "$SHARD" -o bad6 a.tok w.tok
check "nothing left after disagreeing inputs" sh -c "[ ! -e bad6 ]"
expect_fail "missing input" 1 "cannot open 'nope.tok'" "$SHARD" -o bad7 nope.tok
check "no temporaries left after failures" clean_dir
mkfifo fifo
"$SHARD" -o sig <fifo 2>/dev/null &
pid=$!
exec 3>fifo
head -c 30000 a.tok >&3
sleep 1
check "a temporary directory exists while it runs" sh -c "ls -A | grep -q '^\.sig\.tmp'"
kill -TERM $pid
wait $pid 2>/dev/null; rc=$?
exec 3>&-
check "SIGTERM stops it" test "$rc" -ne 0
check "SIGTERM leaves nothing behind" sh -c "[ ! -e sig ] && ! ls -A | grep -q '^\.sig'"
rm -f fifo
mkdir full && echo keep >full/keep
expect_fail "non-empty directory without --force" 1 "not empty" "$SHARD" -o full a.tok
check "--force replaces it" sh -c "'$SHARD' -o full --force a.tok && [ ! -e full/keep ] && '$SHARD' verify full"
"$SHARD" -o full --force trunc.tok 2>/dev/null
check "a failed --force keeps the old directory" "$SHARD" verify full
mkdir emptydir
check "an empty directory is used" sh -c "'$SHARD' -o emptydir a.tok && '$SHARD' verify emptydir"

# corrupted shards
cp -r d2 c1
f=c1/train-00000.shard
printf 'Z' | dd of=$f bs=1 seek=3000 conv=notrunc 2>/dev/null
expect_fail "verify names the corrupted file" 1 "train-00000.shard" "$SHARD" verify c1
cp -r d1 c2
sz=$(wc -c <c2/train-00001.shard)
head -c $((sz - 100)) c2/train-00001.shard >x && mv x c2/train-00001.shard
expect_fail "verify catches a truncated shard" 1 "train-00001.shard: file is" "$SHARD" verify c2
expect_fail "cat refuses a truncated shard" 1 "truncated or extended" "$SHARD" cat c2
cp -r d1 c3
sed 's/"docs": 360/"docs": 361/' d1/index.json >c3/index.json
expect_fail "verify checks index.json" 1 "disagree" "$SHARD" verify c3
cp -r d1 c4
printf '\377\377' | dd of=c4/val-00000.shard bs=1 seek=200 conv=notrunc 2>/dev/null
expect_fail "verify reports the offset" 1 "offset" "$SHARD" verify c4
expect_fail "no index" 1 "index.json" "$SHARD" info .

# usage
check "--help" sh -c "'$SHARD' --help | grep -q Usage"
check "--version" sh -c "'$SHARD' --version | grep -q '(moe)'"
expect_fail "no -o" 2 "Try" "$SHARD" a.tok
expect_fail "bad option" 2 "Try" "$SHARD" --bogus -o x a.tok
expect_fail "bad level" 2 "compression level" "$SHARD" -o x --compress=99 a.tok
expect_fail "both splits" 2 "exclude" "$SHARD" -o x --val-docs 3 --val-fraction 0.1 a.tok
expect_fail "bad split" 2 "split" "$SHARD" cat --split test d1
expect_fail "info needs a directory" 2 "one shard directory" "$SHARD" info

# the EXAMPLES of moe-shard(1), moe-tokstream(5) and moe-shard(5), in that
# order and in one directory (moe-tokenize is another tool's business)
mkdir ex && "$MK" -s 9 -n 1500 -e 50279 -l 200 >ex/tokens.bin
for page in moe-shard.1 moe-tokstream.5 moe-shard.5; do
	sed -n '/^\.Sh EXAMPLES/,/^\.Sh /p' "${MOE_SRCDIR:?}/man/$page" | sed -n 's/^\.Dl \$ //p' |
		sed 's/\\-/-/g; s/\\(ba/|/g; s/\\e/\\/g' | grep -v '^moe-tokenize'
done >ex/examples.sh
if [ "$(wc -l <ex/examples.sh)" -lt 8 ]; then
	not_ok "man page examples found"
elif (cd ex && PATH="$BIN:$PATH" sh -e examples.sh >/dev/null 2>"$T/err"); then
	ok "man page examples ($(wc -l <ex/examples.sh) commands)"
else
	not_ok "man page examples"; sed 's/^/# /' "$T/err" ex/examples.sh
fi

echo "1..$n"
[ "$fails" -eq 0 ]
