#!/bin/sh
# Build the libFuzzer harness and fuzz the Parquet reader for SECONDS
# (default 300) from a corpus seeded with the shared test files.  New
# crashers land in tests/parquet/crashers/ (add them to the repository:
# test_parquet replays every file there).
#   sh tests/parquet/fuzz.sh [SECONDS]
set -eu
src=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-300}
work=${FUZZ_DIR:-/tmp/moe-fuzz-parquet}
mkdir -p "$work/corpus" "$src/tests/parquet/crashers"
shared=${MOE_SHARED:-$src/../shared}
find "$shared/data/parquet" -name '*.parquet' -size -200k -exec cp {} "$work/corpus/" \;
cat > "$work/config.h" <<'H'
#define PACKAGE_VERSION "fuzz"
H
clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	-I"$src/lib" -I"$work" -DPQ_MAX_VALUES='((int64_t)1 << 20)' -DPQ_MAX_PAGE='((int64_t)1 << 24)' \
	$(pkg-config --cflags jansson) \
	"$src/tests/parquet/fuzz_parquet.c" "$src/lib/parquet/thrift.c" "$src/lib/parquet/meta.c" \
	"$src/lib/parquet/read.c" "$src/lib/parquet/snappy.c" "$src/lib/parquet/jsonl.c" "$src/lib/core/error.c" \
	-lsnappy -lzstd -lz -lm -o "$work/fuzz_parquet"
cd "$work"
./fuzz_parquet -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
	-artifact_prefix="$src/tests/parquet/crashers/" corpus
