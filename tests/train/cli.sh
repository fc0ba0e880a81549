#!/bin/sh
# moe-train / moe-eval command-line tests on a micro model and synthetic
# shards: usage errors, config + CLI precedence, metrics, checkpoints,
# keep-K, eval JSON, corrupted checkpoints.
NAME=cli
. "${MOE_SRCDIR:?}/tests/train/common.sh"
EVAL=$BIN/moe-eval
[ -x "$EVAL" ] || { echo "moe-eval not built"; exit 77; }
export OMP_NUM_THREADS=1

"$B/tests/train/mkdata" "$T/data" 200 || fail "mkdata"
MODEL=$S/tests/train/data/micro.json
COMMON="--model $MODEL --data $T/data --device cpu --micro-batch 4 --seq-len 16 --warmup 2 --lr 3e-3 -q"

# --- usage errors exit 2, help and version exit 0
"$TRAIN" >/dev/null 2>&1; [ $? -eq 2 ] || fail "no arguments should exit 2"
"$TRAIN" --bogus >/dev/null 2>&1; [ $? -eq 2 ] || fail "unknown option should exit 2"
"$TRAIN" $COMMON --out "$T/x" --steps 2 --micro-batch 0 >/dev/null 2>&1; [ $? -eq 2 ] || fail "--micro-batch 0 should exit 2"
"$TRAIN" $COMMON --out "$T/x" --steps 2 --schedule cosinus 2>"$T/err"; [ $? -eq 2 ] || fail "bad schedule should exit 2"
grep -q "Try 'moe-train --help'" "$T/err" || fail "usage error without hint"
"$TRAIN" $COMMON --out "$T/x" extra >/dev/null 2>&1; [ $? -eq 2 ] || fail "operand should exit 2"
"$EVAL" >/dev/null 2>&1; [ $? -eq 2 ] || fail "moe-eval without a checkpoint should exit 2"
"$TRAIN" --help | grep -q -- "--grad-accum" || fail "--help"
"$EVAL" --help | grep -q -- "--selection-bias" || fail "moe-eval --help"
"$TRAIN" --version | grep -q "^moe-train (moe) " || fail "--version"
# an unknown key in the config file is an error naming the key
echo '{"learning_rate": 1}' > "$T/bad.json"
"$TRAIN" $COMMON --out "$T/x" --steps 2 --config "$T/bad.json" 2>"$T/err"; [ $? -eq 1 ] || fail "bad config key should exit 1"
grep -q learning_rate "$T/err" || fail "bad config key not named"
# without a GPU, --device auto says so and suggests --device cpu (skip where CUDA works)
if "$TRAIN" --model "$MODEL" --data "$T/data" --out "$T/auto" --steps 1 --seq-len 16 -q 2>"$T/err"; then
	echo "note: a CUDA device is present"
else
	grep -q -- "--device cpu" "$T/err" || fail "auto without GPU should suggest --device cpu"
fi

# --- --recompute full trains to the same losses as the default (and a bad value is a usage error)
"$TRAIN" $COMMON --out "$T/x" --steps 2 --recompute some 2>"$T/err"; [ $? -eq 2 ] || fail "bad --recompute should exit 2"
grep -q "cheap, full" "$T/err" || fail "bad --recompute should list the choices"
"$TRAIN" $COMMON --out "$T/rc0" --steps 4 --eval-every 0 || fail "cheap run"
"$TRAIN" $COMMON --out "$T/rc1" --steps 4 --eval-every 0 --recompute full || fail "full-recompute run"
grep -q '"recompute": "full"' "$T/rc1/train.json" || fail "recompute not recorded in train.json"
l0=$(sed -n 's/.*"split":"train".*"loss":\([^,]*\),.*/\1/p' "$T/rc0/metrics.jsonl" | tr '\n' ' ')
l1=$(sed -n 's/.*"split":"train".*"loss":\([^,]*\),.*/\1/p' "$T/rc1/metrics.jsonl" | tr '\n' ' ')
[ -n "$l0" ] && [ "$l0" = "$l1" ] || fail "full recompute changed the losses: $l0 vs $l1"

# --- config file + CLI precedence; a short run
printf '{"lr": 0.01, "micro_batch": 2, "eval_every": 3, "seq_len": 16}\n' > "$T/train.json"
"$TRAIN" --model "$MODEL" --data "$T/data" --out "$T/run" --device cpu --config "$T/train.json" \
	--lr 0.005 --steps 6 --ckpt-every 3 --warmup 1 -q || fail "training run"
grep -q '"lr": 0.0050' "$T/run/train.json" || fail "CLI --lr should win over the config"
grep -q '"micro_batch": 2,' "$T/run/train.json" || fail "config micro_batch not applied"
n=$(grep -c '"split":"train"' "$T/run/metrics.jsonl")
[ "$n" -eq 6 ] || fail "expected 6 train records, got $n"
v=$(grep -c '"split":"val"' "$T/run/metrics.jsonl")
[ "$v" -eq 2 ] || fail "expected 2 val records, got $v"
for k in step tokens loss ce aux z lr grad_norm grad_norm_expert grad_norm_other tokens_per_s mfu rss_bytes load_max; do
	head -n 1 "$T/run/metrics.jsonl" | grep -q "\"$k\":" || fail "metrics lack $k"
done
grep '"split":"val"' "$T/run/metrics.jsonl" | head -n 1 | grep -q '"ppl":' || fail "val record lacks ppl"
[ "$(readlink "$T/run/ckpt/latest")" = step-0000006 ] || fail "latest should be step-0000006"
for f in model.safetensors config.json optimizer.safetensors trainer_state.json; do
	[ -f "$T/run/ckpt/step-0000006/$f" ] || fail "checkpoint lacks $f"
done
grep -q '"model_type": "olmoe"' "$T/run/ckpt/latest/config.json" || fail "config.json not OLMoE"
grep -q '"index_sha256"' "$T/run/ckpt/latest/trainer_state.json" || fail "no data identity"
# a second run into the same directory without --resume is refused
"$TRAIN" $COMMON --out "$T/run" --steps 2 2>/dev/null; [ $? -eq 1 ] || fail "existing run should be refused"

# --- --tokens gives whole steps (4 x 16 tokens per step: 100 tokens -> 2 steps)
"$TRAIN" $COMMON --out "$T/tok" --tokens 100 --eval-every 0 || fail "--tokens run"
[ "$(grep -c '"split":"train"' "$T/tok/metrics.jsonl")" -eq 2 ] || fail "--tokens 100 should run 2 steps"

# --- resuming on other data is refused
"$B/tests/train/mkdata" "$T/data2" 200 99 || fail "mkdata 2"
"$TRAIN" --out "$T/tok" --resume --data "$T/data2" --steps 4 -q 2>"$T/err"; [ $? -eq 1 ] || fail "resume on other data should exit 1"
grep -q "loader state" "$T/err" || fail "resume on other data: unclear error: $(cat "$T/err")"

# --- keep-K
"$TRAIN" $COMMON --out "$T/keep" --steps 5 --ckpt-every 1 --keep 2 --eval-every 0 || fail "keep run"
ls "$T/keep/ckpt" | grep -c '^step-' | grep -qx 2 || fail "keep 2 should leave 2 checkpoints"
[ -d "$T/keep/ckpt/step-0000004" ] && [ -d "$T/keep/ckpt/step-0000005" ] || fail "wrong checkpoints kept"
ls -a "$T/keep/ckpt" | grep -q '\.tmp\.' && fail "temporary left behind"

# --- moe-eval JSON
"$EVAL" "$T/run/ckpt/latest" --data "$T/data" --split val --device cpu > "$T/eval.json" || fail "moe-eval"
for k in loss ppl ce aux z tokens; do
	grep -q "\"$k\":" "$T/eval.json" || fail "eval JSON lacks $k"
done
# the run directory resolves to its latest checkpoint; same numbers
"$EVAL" "$T/run" --data "$T/data" --device cpu > "$T/eval2.json" || fail "moe-eval RUN"
[ "$(grep '"ce"' "$T/eval.json")" = "$(grep '"ce"' "$T/eval2.json")" ] || fail "RUN and RUN/ckpt/latest differ"
"$EVAL" "$T/run" --data "$T/data" --device cpu --selection-bias | grep -q '"selection_bias": true' || fail "--selection-bias"
"$EVAL" "$T/run" --data "$T/data" --device cpu --split nope >/dev/null 2>&1; [ $? -eq 2 ] || fail "bad split should exit 2"

# --- moe-eval generate: prompt first, deterministic for a seed
TOK=$S/tests/train/data/bytes-tokenizer.json
"$TRAIN" --model "$S/tests/train/data/micro260.json" --data "$T/data" --out "$T/gen" --device cpu \
	--steps 2 --micro-batch 2 --seq-len 16 -q || fail "training the generate model"
G="$EVAL generate $T/gen -t $TOK --device cpu --prompt Hello --max-tokens 12"
$G > "$T/g1" || fail "generate"
$G > "$T/g2" || fail "generate again"
head -c 5 "$T/g1" | grep -q '^Hello$' || fail "generate output should start with the prompt"
[ "$(wc -c < "$T/g1")" -gt 6 ] || fail "generate produced nothing"
cmp -s "$T/g1" "$T/g2" || fail "greedy generation is not deterministic"
$G --temperature 0.9 --top-p 0.8 --seed 3 > "$T/s1" || fail "sampling"
$G --temperature 0.9 --top-p 0.8 --seed 3 > "$T/s2" || fail "sampling again"
cmp -s "$T/s1" "$T/s2" || fail "sampling with one seed is not deterministic"
$G --max-tokens 0 > "$T/g0" || fail "generate 0 tokens"
[ "$(cat "$T/g0")" = Hello ] || fail "--max-tokens 0 should print the prompt only"
"$EVAL" generate "$T/gen" --prompt x >/dev/null 2>&1; [ $? -eq 2 ] || fail "generate without -t should exit 2"

# --- the example recipe share/recipes/train.mk
if command -v make >/dev/null 2>&1; then
	make -s -f "$S/share/recipes/train.mk" DATA="$T/data" RUN="$T/mk" MODEL="$MODEL" DEVICE=cpu \
		STEPS=3 TRAIN_FLAGS="--micro-batch 2 --seq-len 16 --eval-every 0 -q" \
		MOE_TRAIN="$TRAIN" MOE_EVAL="$EVAL" >/dev/null || fail "train.mk"
	grep -q '"ppl"' "$T/mk/eval.json" || fail "train.mk: no eval.json"
fi

# --- corrupted checkpoint: a clear error naming the file, exit 1
cp -r "$T/run" "$T/bad"
ck=$T/bad/ckpt/step-0000006
head -c 100 "$ck/model.safetensors" > "$ck/m" && mv "$ck/m" "$ck/model.safetensors"
"$EVAL" "$T/bad" --data "$T/data" --device cpu >/dev/null 2>"$T/err"; [ $? -eq 1 ] || fail "corrupt checkpoint should exit 1"
grep -q "model.safetensors" "$T/err" || fail "corrupt checkpoint error should name the file: $(cat "$T/err")"
"$TRAIN" --out "$T/bad" --resume --steps 8 -q 2>"$T/err"; [ $? -eq 1 ] || fail "resume from a corrupt checkpoint should exit 1"
grep -q "model.safetensors" "$T/err" || fail "resume error should name the file"
cp -r "$T/run" "$T/bad2"
echo '{"version": 1, "step": 6' > "$T/bad2/ckpt/step-0000006/trainer_state.json"
"$TRAIN" --out "$T/bad2" --resume --steps 8 -q 2>"$T/err"; [ $? -eq 1 ] || fail "broken trainer_state should exit 1"
grep -q "trainer_state.json" "$T/err" || fail "trainer_state error should name the file"
exit 0
