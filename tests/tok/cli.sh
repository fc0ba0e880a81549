#!/bin/sh
# moe-tokenize command-line behaviour, self-contained (no network, no
# shared data): options and exit codes, round trips, the ordered -j
# pipeline, EOS choices, invalid JSON / invalid UTF-8 policies, unsupported
# tokenizer.json keys, and the examples of moe-tokenize(1).
set -u
: "${MOE_BIN:?}" "${MOE_SRCDIR:?}"
MT="$MOE_BIN/moe-tokenize"
EDGE="$MOE_SRCDIR/tests/tok/edge.jsonl"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tokcli.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
fail=0
ok() { echo "ok $1"; }
bad() { echo "FAIL $1"; fail=1; }
check() { if [ "$1" = "$2" ]; then ok "$3"; else bad "$3 (got '$1', want '$2')"; fi; }

# options
"$MT" --help > "$tmp/h" 2>&1; check "$?" 0 "--help exits 0"
grep -q '^Usage: moe-tokenize encode' "$tmp/h" && ok "--help prints usage" || bad "--help prints usage"
"$MT" --version | grep -q '^moe-tokenize (moe) ' && ok "--version" || bad "--version"
"$MT" encode --bogus > /dev/null 2> "$tmp/e"; check "$?" 2 "unknown option exits 2"
grep -q "Try 'moe-tokenize --help'" "$tmp/e" && ok "usage hint" || bad "usage hint"
"$MT" frobnicate 2> /dev/null; check "$?" 2 "unknown command exits 2"
"$MT" encode < /dev/null 2> /dev/null; check "$?" 2 "encode without -t exits 2"
"$MT" encode -t /nonexistent.json < /dev/null 2> "$tmp/e"; check "$?" 1 "missing tokenizer exits 1"
grep -q "^moe-tokenize: .*nonexistent.json" "$tmp/e" && ok "missing tokenizer message" || bad "missing tokenizer message"

# a small vocabulary from the edge corpus (no normalizer: exact round trips)
"$MT" train -q --vocab-size 600 -o "$tmp/tok.json" "$EDGE"; check "$?" 0 "train"
"$MT" info -t "$tmp/tok.json" > "$tmp/info"; check "$?" 0 "info"
grep -q '^vocab size: *600$' "$tmp/info" && ok "info vocab size" || bad "info vocab size"
grep -q '^eos: *0 <|endoftext|>$' "$tmp/info" && ok "info eos" || bad "info eos"
"$MT" info --json -t "$tmp/tok.json" | grep -q '"vocab_size": 600' && ok "info --json" || bad "info --json"

# round trips: stream and ids, decode to jsonl equals the input texts
"$MT" encode -t "$tmp/tok.json" -o "$tmp/s.tks" "$EDGE"; check "$?" 0 "encode stream"
"$MT" decode -t "$tmp/tok.json" --format jsonl -o "$tmp/back.jsonl" "$tmp/s.tks"; check "$?" 0 "decode stream"
cmp -s "$tmp/back.jsonl" "$EDGE" && ok "stream round trip" || bad "stream round trip"
"$MT" encode -t "$tmp/tok.json" --format ids --eos none "$EDGE" | "$MT" decode -t "$tmp/tok.json" --format jsonl > "$tmp/back2.jsonl"
cmp -s "$tmp/back2.jsonl" "$EDGE" && ok "ids round trip" || bad "ids round trip"
"$MT" encode -t "$tmp/tok.json" --format jsonl --eos none "$EDGE" > "$tmp/ids.jsonl"
head -1 "$tmp/ids.jsonl" | grep -q '"ids": *\[' && ok "jsonl output" || bad "jsonl output"
"$MT" decode -t "$tmp/tok.json" --format jsonl "$tmp/ids.jsonl" | cmp -s - "$EDGE" && ok "jsonl ids round trip" || bad "jsonl ids round trip"
"$MT" encode -t "$tmp/tok.json" "$EDGE" > /dev/null < /dev/null; check "$?" 0 "stream to a non-terminal"

# ordered output at any -j (several batches: > 4096 lines)
i=0; : > "$tmp/big.jsonl"
while [ $i -lt 40 ]; do cat "$EDGE" >> "$tmp/big.jsonl"; i=$((i + 1)); done
"$MT" encode -t "$tmp/tok.json" -j 1 -o "$tmp/j1.tks" "$tmp/big.jsonl"
for j in 2 3 7; do
	"$MT" encode -t "$tmp/tok.json" -j $j -o "$tmp/j.tks" "$tmp/big.jsonl"
	cmp -s "$tmp/j1.tks" "$tmp/j.tks" && ok "-j $j output equals -j 1" || bad "-j $j output equals -j 1"
done
"$MT" encode -t "$tmp/tok.json" -j 3 --format ids "$EDGE" "$tmp/big.jsonl" - < "$EDGE" > "$tmp/multi.ids"
check "$(wc -l < "$tmp/multi.ids")" "$(cat "$EDGE" "$tmp/big.jsonl" "$EDGE" | wc -l)" "several inputs and stdin, one line per document"

# EOS: default (the tokenizer's), none, an id, a token string
echo '{"text":"hello"}' > "$tmp/one.jsonl"
last() { "$MT" encode -t "$tmp/tok.json" --format ids "$@" "$tmp/one.jsonl" | awk '{print $NF}'; }
n_none=$("$MT" encode -t "$tmp/tok.json" --format ids --eos none "$tmp/one.jsonl" | wc -w)
n_def=$("$MT" encode -t "$tmp/tok.json" --format ids "$tmp/one.jsonl" | wc -w)
check "$((n_def - n_none))" 1 "default EOS adds one id"
check "$(last)" 0 "default EOS is <|endoftext|>"
check "$(last --eos 5)" 5 "--eos ID"
check "$(last --eos '<|endoftext|>')" 0 "--eos TOKEN"
"$MT" encode -t "$tmp/tok.json" --eos 999999 < "$tmp/one.jsonl" > /dev/null 2>&1; check "$?" 2 "--eos out of range exits 2"
echo 'a <|endoftext|> b' > "$tmp/sp.txt"
"$MT" encode -t "$tmp/tok.json" --text --format ids --eos none "$tmp/sp.txt" | grep -qw 0 && ok "special token matched in text" || bad "special token matched in text"
"$MT" encode -t "$tmp/tok.json" --text --no-added --format ids --eos none "$tmp/sp.txt" | grep -qw 0 && bad "--no-added" || ok "--no-added"

# invalid JSON: error names file and line, exit 1, no output file
printf '{"text":"a"}\n{"text":"b"}\n{"text": oops}\n{"text":"d"}\n' > "$tmp/broken.jsonl"
"$MT" encode -t "$tmp/tok.json" -o "$tmp/out.tks" "$tmp/broken.jsonl" 2> "$tmp/e"; check "$?" 1 "invalid JSON exits 1"
grep -q "broken.jsonl:3: invalid JSON" "$tmp/e" && ok "invalid JSON names the line" || bad "invalid JSON names the line: $(cat "$tmp/e")"
[ ! -e "$tmp/out.tks" ] && ok "no partial output file" || bad "no partial output file"
ls -a "$tmp" | grep -q '^\.out\.tks' && bad "temporary left behind" || ok "no temporary left behind"
"$MT" encode -t "$tmp/tok.json" -j 4 -o "$tmp/out.tks" "$tmp/big.jsonl" "$tmp/broken.jsonl" 2> "$tmp/e"; check "$?" 1 "invalid JSON at -j 4 exits 1"
grep -q "broken.jsonl:3: invalid JSON" "$tmp/e" && ok "invalid JSON at -j 4 names the line" || bad "invalid JSON at -j 4 names the line"
printf '{"title":"x"}\n' > "$tmp/nofield.jsonl"
"$MT" encode -t "$tmp/tok.json" --format ids "$tmp/nofield.jsonl" 2> "$tmp/e" > /dev/null; check "$?" 1 "missing field exits 1"
grep -q "nofield.jsonl:1: no string field 'text'" "$tmp/e" && ok "missing field message" || bad "missing field message"
"$MT" encode -t "$tmp/tok.json" --field title --format ids --eos none "$tmp/nofield.jsonl" > /dev/null; check "$?" 0 "--field"
printf '{"text":"\\ud800"}\n' > "$tmp/surr.jsonl"
"$MT" encode -t "$tmp/tok.json" --format ids "$tmp/surr.jsonl" 2> /dev/null > /dev/null; check "$?" 1 "lone surrogate in JSON exits 1"

# invalid UTF-8 in --text mode: error naming the line, or U+FFFD with --lossy
printf 'good line\nbad \377\376 bytes \355\240\200 here\n' > "$tmp/bad.txt"
"$MT" encode -t "$tmp/tok.json" --text --format ids "$tmp/bad.txt" 2> "$tmp/e" > /dev/null; check "$?" 1 "invalid UTF-8 exits 1"
grep -q "bad.txt:2: invalid UTF-8 at byte offset 4" "$tmp/e" && ok "invalid UTF-8 names line and offset" || bad "invalid UTF-8 message: $(cat "$tmp/e")"
printf 'good line\nbad \357\277\275\357\277\275 bytes \357\277\275\357\277\275\357\277\275 here\n' > "$tmp/fixed.txt"
"$MT" encode -t "$tmp/tok.json" --text --lossy --format ids "$tmp/bad.txt" > "$tmp/l1"; check "$?" 0 "--lossy"
"$MT" encode -t "$tmp/tok.json" --text --format ids "$tmp/fixed.txt" > "$tmp/l2"
cmp -s "$tmp/l1" "$tmp/l2" && ok "--lossy equals U+FFFD per maximal subpart" || bad "--lossy equals U+FFFD per maximal subpart"

# unsupported tokenizer.json content is an error naming the key
sed 's/"normalizer": null/"normalizer": {"type": "Lowercase"}/' "$tmp/tok.json" > "$tmp/lc.json"
"$MT" info -t "$tmp/lc.json" > /dev/null 2> "$tmp/e"; check "$?" 1 "unsupported normalizer exits 1"
grep -q "normalizer: unsupported normalizer type 'Lowercase'" "$tmp/e" && ok "unsupported normalizer names the key" || bad "unsupported normalizer message: $(cat "$tmp/e")"
sed '/"pre_tokenizer"/,/}/ s/"ByteLevel"/"Whitespace"/' "$tmp/tok.json" > "$tmp/ws.json"
"$MT" info -t "$tmp/ws.json" 2> "$tmp/e" > /dev/null; check "$?" 1 "unsupported pre-tokenizer exits 1"
grep -q "pre_tokenizer: unsupported pre-tokenizer type 'Whitespace'" "$tmp/e" && ok "unsupported pre-tokenizer names the key" || bad "unsupported pre-tokenizer message: $(cat "$tmp/e")"
printf 'not a rank file\n' > "$tmp/x.tiktoken"
"$MT" info -t "$tmp/x.tiktoken" 2> /dev/null > /dev/null; check "$?" 1 "bad tiktoken file exits 1"

# examples from moe-tokenize(1)
cd "$tmp" || exit 1
cp "$EDGE" docs.jsonl
"$MT" train --vocab-size 1000 -j 2 -o tok.json docs.jsonl && ok "example: train" || bad "example: train"
"$MT" encode -t tok.json -j 2 docs.jsonl > docs.tks && ok "example: encode" || bad "example: encode"
"$MT" decode -t tok.json docs.tks | head -n 3 > /dev/null && ok "example: decode" || bad "example: decode"
echo 'Hello  world' | "$MT" encode -t tok.json --text --format ids --eos none > /dev/null && ok "example: ids" || bad "example: ids"
"$MT" info -t tok.json > /dev/null && ok "example: info" || bad "example: info"
OLMO="${MOE_SHARED:-/nonexistent}/data/tokenizers/olmo-gpt-neox-dolma-v1_5.json"
if [ -f "$OLMO" ] && [ -x "$MOE_BIN/moe-shard" ]; then
	cp "$OLMO" olmo-gpt-neox-dolma-v1_5.json
	"$MT" encode -t olmo-gpt-neox-dolma-v1_5.json -j 16 \
	    docs.jsonl | "$MOE_BIN/moe-shard" -q -o data/ && [ -d data ] && ok "example: moe-shard" || bad "example: moe-shard"
fi
exit $fail
