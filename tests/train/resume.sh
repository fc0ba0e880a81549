#!/bin/sh
# Exact resume on the CPU backend: a straight run of 8 steps against
# (a) 4 steps then --resume to 8, (b) a 200-step run killed with SIGKILL
# after its step-40 checkpoint then resumed, (c) SIGTERM: a checkpoint is written, the
# exit status is 0, and resuming continues the same curve.  The losses in
# metrics.jsonl must be identical (bit for bit in their printed form).
NAME=resume
. "${MOE_SRCDIR:?}/tests/train/common.sh"
export OMP_NUM_THREADS=2

"$B/tests/train/mkdata" "$T/data" 200 || fail "mkdata"
# a fixed decay length so that runs of different --steps share one schedule
ARGS="--model $S/tests/train/data/micro.json --data $T/data --device cpu --micro-batch 4
 --grad-accum 2 --seq-len 16 --warmup 2 --lr 3e-3 --decay-steps 8 --eval-every 4 --ckpt-every 2 -q"

"$TRAIN" $ARGS --out "$T/straight" --steps 8 || fail "straight run"
losses "$T/straight" > "$T/want"
[ "$(grep -c train "$T/want")" -eq 8 ] || fail "straight run: expected 8 train losses"

# (a) stop at 4, resume to 8
"$TRAIN" $ARGS --out "$T/a" --steps 4 || fail "first half"
"$TRAIN" --out "$T/a" --resume --steps 8 -q || fail "resume"
losses "$T/a" > "$T/got"
cmp -s "$T/want" "$T/got" || { diff "$T/want" "$T/got"; fail "resumed losses differ"; }

# (b) SIGKILL in the middle of a longer run, after its step-40 checkpoint
L="--decay-steps 200 --ckpt-every 20 --eval-every 50"
"$TRAIN" $ARGS $L --out "$T/b2" --steps 200 || fail "straight 200-step run"
losses "$T/b2" > "$T/want3"
"$TRAIN" $ARGS $L --out "$T/b" --steps 200 &
pid=$!
i=0
while [ ! -d "$T/b/ckpt/step-0000040" ] && [ $i -lt 1200 ]; do sleep 0.02; i=$((i + 1)); done
kill -KILL $pid 2>/dev/null
wait $pid 2>/dev/null
n=$(cat "$T/b/metrics.jsonl" | grep -c train)
[ "$n" -lt 200 ] || echo "note: the run finished before SIGKILL"
"$TRAIN" --out "$T/b" --resume -q || fail "resume after SIGKILL"
losses "$T/b" > "$T/got"
cmp -s "$T/want3" "$T/got" || { diff "$T/want3" "$T/got" | head; fail "losses after SIGKILL + resume differ"; }

# (c) SIGTERM writes a checkpoint and exits 0
"$TRAIN" $ARGS --out "$T/c" --steps 1000000 --ckpt-every 0 --eval-every 0 &
pid=$!
i=0
while [ "$(cat "$T/c/metrics.jsonl" 2>/dev/null | grep -c train)" -lt 3 ] && [ $i -lt 600 ]; do
	sleep 0.05; i=$((i + 1))
done
kill -TERM $pid
wait $pid
rc=$?
[ $rc -eq 0 ] || fail "SIGTERM: exit status $rc, want 0"
n=$(grep -c '"split":"train"' "$T/c/metrics.jsonl")
[ "$(readlink "$T/c/ckpt/latest")" = "$(printf 'step-%07d' "$n")" ] || fail "SIGTERM: latest is not step $n"
"$TRAIN" --out "$T/c" --resume --steps $((n + 2)) -q || fail "resume after SIGTERM"
"$TRAIN" $ARGS --out "$T/c2" --steps $((n + 2)) --ckpt-every 0 --eval-every 0 || fail "reference run"
losses "$T/c" > "$T/got"
losses "$T/c2" > "$T/want2"
cmp -s "$T/want2" "$T/got" || { diff "$T/want2" "$T/got"; fail "losses after SIGTERM + resume differ"; }
exit 0
