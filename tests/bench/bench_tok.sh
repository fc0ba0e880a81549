#!/bin/sh
# Tokenizer benchmarks (moe-tokenize vs Hugging Face tokenizers); prints a
# short table.  Not part of `make check`.
#
#   tests/bench/bench_tok.sh [BUILDDIR]
#
# Environment: MOE_SHARED (default ../shared beside the source tree),
# THREADS (default "1 2 4 8 16", capped at the core count), COPIES (copies of
# sotu.jsonl in the big corpus, default 10 = 108 MB), TRAIN=0 to skip
# training, VOCABS (default "32768 50304").  The Hugging Face reference is
# the Python package when importable (the GPU machine), else the npm package
# installed by tests/tok/hf.sh in BUILDDIR/tests/tok/npm.
set -u
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
B=$(cd "${1:-${MOE_BUILDDIR:-.}}" && pwd)
S=${MOE_SHARED:-$src/../shared}
TOK=$S/data/tokenizers/olmo-gpt-neox-dolma-v1_5.json
SOTU=$S/data/text/sotu.jsonl
MT=$B/cmd/moe-tokenize
BT=$B/tests/bench/bench_tok
[ -x "$MT" ] && [ -x "$BT" ] || { echo "build first: $MT, $BT"; exit 1; }
[ -f "$TOK" ] && [ -f "$SOTU" ] || { echo "missing $TOK or $SOTU"; exit 1; }
ncpu=$(nproc)
THREADS=${THREADS:-1 2 4 8 16}
COPIES=${COPIES:-10}
VOCABS=${VOCABS:-32768 50304}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/benchtok.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
now() { date +%s.%N; }
rate() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.2f", b / 1e6 / s }'; }

echo "machine: $(uname -m), $ncpu cores,$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg)"
echo

echo "== encode, one thread, OLMo tokenizer, sotu.jsonl ($(wc -c < "$SOTU") B; texts in memory; best of 5)"
ours=$("$BT" "$TOK" "$SOTU" 5)
echo "moe-tokenize (libmoetok)   $ours"
hf=""
if python3 -c 'import tokenizers' 2>/dev/null; then
	hf=$(RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false python3 - "$TOK" "$SOTU" <<'PY'
import json, sys, time, tokenizers
tok = tokenizers.Tokenizer.from_file(sys.argv[1])
docs = [json.loads(l)["text"] for l in open(sys.argv[2], encoding="utf-8") if l.strip()]
n = sum(len(d.encode()) for d in docs)
tok.encode(docs[0])
best = 1e30; bc = 1e30
for _ in range(3):
    t0 = time.perf_counter(); c0 = time.process_time()
    for d in docs:
        tok.encode(d)
    best = min(best, time.perf_counter() - t0); bc = min(bc, time.process_time() - c0)
print(f"{n/1e6/best:.3f} MB/s {n} bytes {best:.3f} s cpu {n/1e6/bc:.3f} MB/s (python tokenizers {tokenizers.__version__})")
PY
)
elif [ -d "$B/tests/tok/npm/node_modules/tokenizers" ]; then
	hf=$(NODE_PATH="$B/tests/tok/npm/node_modules" RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false \
		node "$src/tests/tok/ref.js" time "$TOK" "$SOTU")" (npm tokenizers 0.23.2)"
fi
echo "huggingface tokenizers     ${hf:-unavailable}"
if [ -n "$hf" ]; then
	o=$(echo "$ours" | awk '{print $1}'); h=$(echo "$hf" | awk '{print $1}')
	cpu() { echo "$1" | awk '{ for (i = 1; i < NF; i++) if ($i == "cpu") print $(i + 1) }'; }
	oc=$(cpu "$ours"); hc=$(cpu "$hf")
	echo "speed-up                   wall $(awk -v a="$o" -v b="$h" 'BEGIN{printf "%.1fx", a/b}'), cpu $(awk -v a="$oc" -v b="$hc" 'BEGIN{printf "%.1fx", a/b}')"
fi
echo

i=0; : > "$tmp/big.jsonl"
while [ $i -lt "$COPIES" ]; do cat "$SOTU" >> "$tmp/big.jsonl"; i=$((i + 1)); done
bytes=$(wc -c < "$tmp/big.jsonl")
echo "== moe-tokenize encode (JSONL in, token stream out), $COPIES x sotu = $bytes B"
printf '%8s %10s %10s\n' threads seconds MB/s
for j in $THREADS; do
	[ "$j" -le "$ncpu" ] || continue
	t0=$(now)
	"$MT" encode -q -t "$TOK" -j "$j" "$tmp/big.jsonl" > /dev/null || exit 1
	t1=$(now)
	s=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b - a}')
	printf '%8s %10s %10s\n' "$j" "$s" "$(rate "$bytes" "$s")"
done
echo

[ "${TRAIN:-1}" = 0 ] && exit 0
jt=$ncpu; [ "$jt" -gt 16 ] && jt=16
echo "== train on $COPIES x sotu ($bytes B), -j $jt"
printf '%8s %10s\n' vocab seconds
for v in $VOCABS; do
	t0=$(now)
	"$MT" train -q -j "$jt" --vocab-size "$v" -o "$tmp/t$v.json" "$tmp/big.jsonl" || exit 1
	t1=$(now)
	printf '%8s %10s\n' "$v" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b - a}')"
done
if python3 -c 'import tokenizers' 2>/dev/null; then
	python3 -c '
import json, sys
with open(sys.argv[2], "w", encoding="utf-8") as o:
    for l in open(sys.argv[1], encoding="utf-8"):
        if l.strip(): o.write(json.loads(l)["text"] + "\n")
' "$tmp/big.jsonl" "$tmp/big.txt"
	echo "-- the same text as a plain file (one line per sequence), ours vs HF BpeTrainer"
	for v in $VOCABS; do
		t0=$(now)
		"$MT" train -q -j "$jt" --text --vocab-size "$v" -o "$tmp/x$v.json" "$tmp/big.txt" || exit 1
		t1=$(now)
		printf '%8s %10s   (moe-tokenize train --text)\n' "$v" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b - a}')"
		RAYON_NUM_THREADS=$jt python3 - "$tmp/big.txt" "$v" <<'PY'
import sys, time
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tr = trainers.BpeTrainer(vocab_size=int(sys.argv[2]), min_frequency=2, show_progress=False,
                         special_tokens=["<|endoftext|>"],
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
t0 = time.perf_counter()
tok.train([sys.argv[1]], tr)
print(f"{sys.argv[2]:>8} {time.perf_counter() - t0:10.2f}   (HF BpeTrainer, one line per document)")
PY
	done
fi
