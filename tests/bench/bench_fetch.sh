#!/bin/sh
# Benchmark: moe-fetch get from a local imitation of the Hub (hubserver.py on
# 127.0.0.1) against curl fetching the same URL and cp of the same bytes.
#   sh tests/bench/bench_fetch.sh [MOE_FETCH] [MB]
# Creates FILES (default 4) random files of MB megabytes (default 64) in a
# temporary directory (TMPDIR), then times: cp (disk), curl -L of each file
# in turn (one stream), moe-fetch get -j 1 and -j 4 (verified, sha256
# included).  Prints a table of MB/s.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
F=${1:-${MOE_BIN:-$src/build/cmd}/moe-fetch}
MB=${2:-64}
N=${FILES:-4}
tmp=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$tmp"' EXIT
mkdir -p "$tmp/root/sample/10BT"
i=0
while [ $i -lt "$N" ]; do
	head -c $((MB * 1000000)) /dev/urandom > "$tmp/root/sample/10BT/00${i}_00000.parquet"
	i=$((i + 1))
done
echo '{}' > "$tmp/faults.json"
python3 "$src/tests/fetch/hubserver.py" --root "$tmp/root" --repo HuggingFaceFW/fineweb-edu \
	--port-file "$tmp/port" --faults "$tmp/faults.json" --log /dev/null &
pid=$!
while [ ! -f "$tmp/port" ]; do sleep 0.1; done
export HF_ENDPOINT="http://127.0.0.1:$(cat "$tmp/port")"
total=$((MB * N))
now() { python3 -c 'import time; print(time.perf_counter())'; }
rate() { python3 -c 'import sys; print("%-34s %8.0f MB/s" % (sys.argv[1], float(sys.argv[2]) / (float(sys.argv[4]) - float(sys.argv[3]))))' "$@"; }
printf '%-34s %13s\n' "what ($N x $MB MB)" rate
t0=$(now); cp -r "$tmp/root" "$tmp/copy"; sync; t1=$(now)
rate "cp + sync (disk)" $total "$t0" "$t1"
rm -rf "$tmp/copy"
commit=0123456789abcdef0123456789abcdef01234567
t0=$(now)
for f in "$tmp"/root/sample/10BT/*; do
	curl -sfL -o "$tmp/curl.out" "$HF_ENDPOINT/datasets/HuggingFaceFW/fineweb-edu/resolve/$commit/sample/10BT/$(basename "$f")"
done
t1=$(now)
rate "curl -L, one file at a time" $total "$t0" "$t1"
rm -f "$tmp/curl.out"
for j in 1 4; do
	t0=$(now); "$F" get -o "$tmp/out$j" -j $j -q; t1=$(now)
	rate "moe-fetch get -j $j (+sha256)" $total "$t0" "$t1"
	rm -rf "$tmp/out$j"
done
