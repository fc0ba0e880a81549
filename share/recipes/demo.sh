#!/bin/sh
# The demo pipeline on the bundled sample: Parquet -> JSONL -> BPE vocabulary
# -> token stream -> shards -> training (CPU unless a GPU is present) ->
# evaluation -> routing traces, statistics and plots.  No network.
#
#   demo.sh BINDIR SHAREDIR OUTDIR
set -eu
BIN=${1:?bindir}
SHARE=${2:?sharedir}
OUT=${3:-demo-out}
export MOE_DATADIR="$SHARE"
PATH="$BIN:$PATH"
mkdir -p "$OUT"
step() { printf '\n== %s\n' "$*"; }
have() { [ -x "$BIN/$1" ]; }
t0=$(date +%s)

DEVICE=${MOE_DEMO_DEVICE:-cpu}
STEPS=${MOE_DEMO_STEPS:-150}

if have moe-fetch; then
	step "moe-fetch cat: the bundled FineWeb-shaped Parquet sample -> JSONL documents"
	moe-fetch cat "$SHARE/demo/sample.parquet" > "$OUT/docs.jsonl"
	wc -l < "$OUT/docs.jsonl" | xargs printf '%s documents\n'
else
	echo "moe-fetch not built; skipping"; exit 0
fi
# Hold the last 8 documents out for routing traces.
head -n -8 "$OUT/docs.jsonl" > "$OUT/train.jsonl"
tail -n 8 "$OUT/docs.jsonl" > "$OUT/held.jsonl"

if have moe-tokenize; then
	step "moe-tokenize train: a 8192-token byte-level BPE vocabulary"
	moe-tokenize train --vocab-size 8192 --special '<|endoftext|>' "$OUT/train.jsonl" -o "$OUT/tok.json"
	moe-tokenize info -t "$OUT/tok.json"
else
	echo "moe-tokenize not built; stopping"; exit 0
fi

if have moe-shard; then
	step "moe-tokenize encode | moe-shard: token stream -> shards with a validation split"
	rm -rf "$OUT/data"
	moe-tokenize encode -t "$OUT/tok.json" "$OUT/train.jsonl" | moe-shard -o "$OUT/data" --val-docs 16
	moe-shard info "$OUT/data"
else
	echo "moe-shard not built; stopping"; exit 0
fi

if have moe-train; then
	step "moe-train: the tiny preset, $STEPS steps on $DEVICE"
	rm -rf "$OUT/run"
	moe-train --model tiny --data "$OUT/data" --out "$OUT/run" --device "$DEVICE" --steps "$STEPS" \
		--micro-batch 8 --seq-len 128 --lr 3e-3 --warmup 5 --eval-every 50 --eval-batches 8 --ckpt-every 50
	step "moe-eval: validation loss of the last checkpoint"
	moe-eval "$OUT/run/ckpt/latest" --data "$OUT/data" --split val
else
	echo "moe-train not built; stopping"; exit 0
fi

if have moe-routes; then
	step "moe-routes: traces, statistics and plots on held-out documents"
	rm -rf "$OUT/routes"
	moe-routes run "$OUT/run/ckpt/latest" --docs "$OUT/held.jsonl" -t "$OUT/tok.json" -o "$OUT/routes" --max-tokens 20000
	moe-routes stats "$OUT/routes" --label url
	moe-routes plot "$OUT/routes" -o "$OUT/plots"
	ls "$OUT/plots"
fi
printf '\ndemo finished in %ss; outputs in %s\n' "$(( $(date +%s) - t0 ))" "$OUT"
