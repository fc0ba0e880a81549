#!/bin/sh
# For the GPU machine (not part of `make check`): moe-train on the CUDA
# backend against the CPU backend, and seed-base throughput.  Prints tables.
#   sh tests/train/gpu.sh BUILDDIR [SEED_STEPS]
# 1. micro model, 30 steps on cpu and cuda (or, with CURVE_DATA=SHARDS, the
#    tiny preset for 300 steps on real shards): the loss curves side by side
#    (bf16 tolerance: relative differences of a few 1e-3)
# 2. the cpu run's checkpoint evaluated with moe-eval on both backends
# 3. seed-base, seq 2048, micro-batch 16, SEED_STEPS steps (default 12) on
#    synthetic shards: median tokens/s, MFU and step time of the steps after
#    the third, peak host RSS.  Compare with
#    python3 ../shared/bench/torch_ref.py --preset seed --modes best_c
# MOE_GPU_DEVICE=cpu and SEED_STEPS=0 give a dry run without a GPU.
set -eu
BLD=$(cd "${1:?usage: gpu.sh BUILDDIR [SEED_STEPS]}" && pwd)
SEED_STEPS=${2:-12}
SRC=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$BLD/cmd
DEV=${MOE_GPU_DEVICE:-cuda}
export MOE_DATADIR=$SRC/share
T=$(mktemp -d "${TMPDIR:-/tmp}/moe-gpu.XXXXXX")
trap 'rm -rf "$T"' EXIT

# CURVE_DATA=DIR (real shards, e.g. the demo's) switches part 1 to the
# tiny preset for CURVE_STEPS (300) steps of 8 x 128 tokens on those shards.
if [ -n "${CURVE_DATA:-}" ]; then
	DATA=$(cd "$CURVE_DATA" && pwd)
	STEPS=${CURVE_STEPS:-300}
	M="--model tiny --data $DATA --steps $STEPS --micro-batch 8 --seq-len 128 --warmup 5 --lr 3e-3
 --eval-every 50 --eval-batches 8 -q"
	WHAT="tiny preset on $DATA"
else
	"$BLD/tests/train/mkdata" "$T/small" 400
	DATA=$T/small
	STEPS=30
	M="--model $SRC/tests/train/data/micro.json --data $DATA --steps 30 --micro-batch 8
 --seq-len 16 --warmup 5 --lr 3e-3 --eval-every 10 -q"
	WHAT="micro model"
fi
"$BIN/moe-train" $M --device cpu --out "$T/cpu"
"$BIN/moe-train" $M --device "$DEV" --out "$T/gpu"
echo "== 1. $WHAT: training loss, cpu vs $DEV, $STEPS steps"
printf '%5s %12s %12s %10s\n' step cpu "$DEV" rel_diff
loss() { sed -n 's/^{"step":\([0-9]*\),"split":"'$2'".*"loss":\([^,]*\),.*/\1 \2/p' "$1/metrics.jsonl"; }
loss "$T/cpu" train > "$T/a"
loss "$T/gpu" train > "$T/b"
EVERY=$(( STEPS / 30 > 1 ? STEPS / 30 : 1 ))
join "$T/a" "$T/b" | awk -v every=$EVERY '{ d = ($3 - $2) / $2; if (d < 0) d = -d; if (d > m) m = d; s += d; n++;
	if ($1 % every == 0 || $1 == 1) printf "%5d %12.6f %12.6f %10.2e\n", $1, $2, $3, d }
	END { printf "max rel diff %.2e, mean %.2e over %d steps\n", m, s / n, n }'
loss "$T/cpu" val > "$T/a"
loss "$T/gpu" val > "$T/b"
echo "validation loss (step cpu $DEV):"
join "$T/a" "$T/b"

echo "== 2. moe-eval of the cpu checkpoint on both backends"
for d in cpu "$DEV"; do
	printf '%-5s ' $d
	"$BIN/moe-eval" "$T/cpu" --data "$DATA" --device $d | tr -d '\n ' |
		sed 's/.*"loss":\([^,]*\),"ppl":\([^,]*\),"ce":\([^,]*\),.*/loss \1 ppl \2 ce \3/'
	echo
done

[ "$SEED_STEPS" -gt 0 ] || exit 0
echo "== 3. seed-base throughput on $DEV (seq 2048, micro-batch 16, $SEED_STEPS steps)"
"$BLD/tests/train/mkdata" "$T/big" 30000
"$BIN/moe-train" --model seed-base --data "$T/big" --out "$T/seed" --device "$DEV" \
	--steps "$SEED_STEPS" --micro-batch 16 --seq-len 2048 --eval-every 0 --ckpt-every -1 -q
sed -n 's/^{"step":\([0-9]*\),"split":"train".*"step_ms":\([^,]*\),"tokens_per_s":\([^,]*\),"mfu":\([^,]*\),"rss_bytes":\([0-9]*\).*/\1 \2 \3 \4 \5/p' \
	"$T/seed/metrics.jsonl" > "$T/s"
awk '$1 > 3' "$T/s" | sort -k3 -n | awk '{ a[NR] = $0 } END {
	split(a[int((NR + 1) / 2)], f, " ");
	printf "median of %d steps: %.1f ms/step, %.0f tok/s, MFU %s, host RSS %.1f GiB\n",
		NR, f[2], f[3], f[4], f[5] / 2^30 }'
grep -o '"flops_per_token": [0-9.e+]*' "$T/seed/run.json"
