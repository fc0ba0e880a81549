#!/bin/sh
# Benchmark moe-shard (tokens/s to write, verify, cat) and the training loader
# (windows/s), without and with zstd, on a synthetic stream.  Not a test.
#   tests/bench/bench_shard.sh [BUILDDIR [TOKENS]]
# BUILDDIR defaults to $MOE_BUILDDIR or the current directory; TOKENS to 50M.
# Prints the machine and a table; results go in tests/bench/RESULTS-shard.md.
set -eu
B=${1:-${MOE_BUILDDIR:-.}}
N=${2:-50000000}
B=$(cd "$B" && pwd)
make -C "$B" -s cmd/moe-shard tests/data/mkstream tests/bench/bench_loader >/dev/null
W=$(mktemp -d "${TMPDIR:-/tmp}/moe-bench-shard.XXXXXX")
trap 'rm -rf "$W"' EXIT

now() { date +%s.%N; }
rate() { awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN { printf "%.1f", n / (b - a) / 1e6 }'; }
mb() { du -sm "$1" | cut -f1; }

echo "machine: $(uname -m), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "memory:  $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
echo "date:    $(date -u +%Y-%m-%dT%H:%MZ)"
"$B/tests/data/mkstream" -Z -s 1 -t "$N" -l 2000 -e 50279 >"$W/stream.bin"
echo "input:   $N tokens (skewed ids, vocab 50280, docs of 1..2001 tokens), $(mb "$W/stream.bin") MB stream"
echo
printf '%-26s %10s %10s\n' "operation" "M tok/s" "MB"
for mode in none zstd; do
	opt=
	[ "$mode" = zstd ] && opt=--compress
	t0=$(now)
	"$B/cmd/moe-shard" -q -o "$W/d-$mode" --val-docs 1000 $opt "$W/stream.bin"
	t1=$(now)
	printf '%-26s %10s %10s\n' "shard ($mode)" "$(rate "$N" "$t0" "$t1")" "$(mb "$W/d-$mode")"
	t0=$(now)
	cat "$W/stream.bin" | "$B/cmd/moe-shard" -q -o "$W/p-$mode" --val-docs 1000 $opt
	t1=$(now)
	printf '%-26s %10s\n' "shard via pipe ($mode)" "$(rate "$N" "$t0" "$t1")"
	t0=$(now)
	"$B/cmd/moe-shard" -q verify "$W/d-$mode"
	t1=$(now)
	printf '%-26s %10s\n' "verify ($mode)" "$(rate "$N" "$t0" "$t1")"
	t0=$(now)
	"$B/cmd/moe-shard" cat "$W/d-$mode" >/dev/null
	t1=$(now)
	printf '%-26s %10s\n' "cat ($mode)" "$(rate "$N" "$t0" "$t1")"
done
echo
echo "loader, seq_len 2048, micro-batch 16, train split:"
for mode in none zstd; do
	for pf in 0 2; do
		printf '  %-5s ' "$mode"
		"$B/tests/bench/bench_loader" "$W/d-$mode" 2048 16 400 $pf 1
	done
done
