# tests/parquet: the Parquet reader against an independent reader (npm
# hyparquet), malformed and unsupported files, the moe-fetch CLI.
TESTS += tests/parquet/cli.sh tests/parquet/conformance.sh tests/parquet/errors.sh
dist_check_SCRIPTS += tests/parquet/cli.sh tests/parquet/conformance.sh tests/parquet/errors.sh
EXTRA_DIST += tests/parquet/setup-hyparquet.sh tests/parquet/hyparquet-dump.mjs \
	tests/parquet/compare.py tests/parquet/make-fallback.py tests/parquet/fuzz_parquet.c \
	tests/parquet/fuzz.sh tests/parquet/crashers

check_PROGRAMS += tests/parquet/test_parquet
tests_parquet_test_parquet_SOURCES = tests/parquet/test_parquet.c
tests_parquet_test_parquet_CFLAGS = $(CRIT_CFLAGS)
tests_parquet_test_parquet_LDADD = $(PARQUET_LIBS) $(CORE_LIBS) $(CRIT_LIBS)
TESTS += tests/parquet/test_parquet

# the snappy decoder against libsnappy (the oracle)
check_PROGRAMS += tests/parquet/test_snappy
tests_parquet_test_snappy_SOURCES = tests/parquet/test_snappy.c
tests_parquet_test_snappy_CFLAGS = $(CRIT_CFLAGS)
tests_parquet_test_snappy_LDADD = $(PARQUET_LIBS) $(CORE_LIBS) $(CRIT_LIBS)
TESTS += tests/parquet/test_snappy

# Benchmarks (not run by make check): see tests/bench/RESULTS-fetch.md.
noinst_PROGRAMS += tests/bench/bench_parquet
tests_bench_bench_parquet_SOURCES = tests/bench/bench_parquet.c
tests_bench_bench_parquet_LDADD = $(PARQUET_LIBS) $(CORE_LIBS)
EXTRA_DIST += tests/bench/bench_parquet.sh tests/bench/bench_parquet_pyarrow.py \
	tests/bench/bench_fetch.sh tests/bench/RESULTS-fetch.md
