#!/bin/sh
# Reproducible and exactly resumable training on the CUDA backend (skipped
# without a CUDA device): the tiny preset, 8 steps, in separate processes:
# (a) two straight runs give the same losses (bit for bit in their printed
# form) and the same final checkpoint, byte for byte; (b) 4 steps, then
# --resume to 8, the same again.  Each process picks its own GEMM
# algorithms by timing (kernels/gemm.cu), which must never change a bit.
NAME=gpu
. "${MOE_SRCDIR:?}/tests/train/common.sh"
export MOE_DATADIR="$S/share"

"$B/tests/train/mkdata" "$T/data" 300 || fail "mkdata"
ARGS="--model tiny --data $T/data --device cuda --micro-batch 8 --seq-len 128 --warmup 2 --lr 3e-3
 --decay-steps 8 --eval-every 4 --ckpt-every 4 -q"
if ! "$TRAIN" $ARGS --out "$T/probe" --steps 1 2>"$T/probe.err"; then
	if grep -q -e "no CUDA device" -e "no usable CUDA device" -e "no CUDA backend" -e "no CUDA support" "$T/probe.err"; then
		echo "skip: $(cat "$T/probe.err")"
		exit 77
	fi
	cat "$T/probe.err"
	fail "probe run"
fi

final() { cmp -s "$1/ckpt/step-0000008/model.safetensors" "$2/ckpt/step-0000008/model.safetensors" &&
	cmp -s "$1/ckpt/step-0000008/optimizer.safetensors" "$2/ckpt/step-0000008/optimizer.safetensors"; }

"$TRAIN" $ARGS --out "$T/s1" --steps 8 || fail "straight run 1"
"$TRAIN" $ARGS --out "$T/s2" --steps 8 || fail "straight run 2"
losses "$T/s1" > "$T/want"
[ "$(grep -c train "$T/want")" -eq 8 ] || fail "straight run: expected 8 train losses"
losses "$T/s2" > "$T/got"
cmp -s "$T/want" "$T/got" || { diff "$T/want" "$T/got"; fail "two straight runs: losses differ"; }
final "$T/s1" "$T/s2" || fail "two straight runs: the step-8 checkpoints differ"

"$TRAIN" $ARGS --out "$T/r" --steps 4 || fail "first half"
"$TRAIN" --out "$T/r" --resume --steps 8 -q || fail "resume"
losses "$T/r" > "$T/got"
cmp -s "$T/want" "$T/got" || { diff "$T/want" "$T/got"; fail "resumed losses differ"; }
final "$T/s1" "$T/r" || fail "resumed run: the step-8 checkpoint differs"
echo "ok: two straight runs and a resumed one: the same losses and step-8 checkpoints, byte for byte"
