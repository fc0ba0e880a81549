#!/bin/sh
# Benchmark of `moe-routes stats` on a synthetic trace: by default 10M tokens
# x 18 MoE layers, top-4 of 64 experts (the seed's base shape), vocabulary
# 50304.  Prints a short table; results are kept in tests/bench/RESULTS-routes.md.
#
#   tests/bench/bench_routes.sh [BUILDDIR] [TOKENS] [THREADS...]
#
# Needs about 5 GiB of memory and 5 GiB of disk under ${TMPDIR:-/tmp}.
set -eu
export LC_ALL=C
B=${1:-$(pwd)}
N=${2:-10000000}
shift 2 2>/dev/null || shift $#
THREADS=${*:-"1 $(nproc)"}
BIN=$B/cmd/moe-routes
[ -x "$BIN" ] || { echo "no $BIN (give the build directory)"; exit 1; }
W=$(mktemp -d "${TMPDIR:-/tmp}/bench-routes.XXXXXX")
trap 'rm -rf "$W"' EXIT INT TERM

now() { date +%s.%N; }
t0=$(now)
"$BIN" synth -o "$W/trace" --tokens "$N" --layers 18 --experts 64 --top-k 4 --vocab 50304 \
	--doc-len 500 --no-csv
t1=$(now)
size=$(du -sm "$W/trace" | cut -f1)
# warm the page cache so that the stats pass reads memory, as on a rerun
cat "$W/trace/routes.safetensors" > /dev/null
echo "machine: $(uname -m), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "trace: $N tokens x 18 layers x top-4 of 64, ${size} MiB (synth $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s)"
printf '%-8s %12s %12s %14s\n' threads "pass (s)" "total (s)" "Mtok/s (pass)"
for th in $THREADS; do
	out=$(OMP_NUM_THREADS=$th "$BIN" stats "$W/trace" -o "$W/stats$th" | tail -1)
	pass=$(echo "$out" | sed -n 's/.* in \([0-9.]*\) s (+\([0-9.]*\) s writing).*/\1/p')
	wr=$(echo "$out" | sed -n 's/.* in \([0-9.]*\) s (+\([0-9.]*\) s writing).*/\2/p')
	awk -v th="$th" -v p="$pass" -v w="$wr" -v n="$N" \
		'BEGIN { printf "%-8s %12.2f %12.2f %14.2f\n", th, p, p + w, n / 1e6 / p }' 
done
