# tests/data: token stream, shards, loader (Criterion) and moe-shard (shell).
check_PROGRAMS += tests/data/test_tokstream tests/data/test_loader tests/data/mkstream
tests_data_test_tokstream_SOURCES = tests/data/test_tokstream.c
tests_data_test_tokstream_CFLAGS = $(CRIT_CFLAGS)
tests_data_test_tokstream_LDADD = lib/data/libmoedata.a $(CORE_LIBS) $(CRIT_LIBS) $(PTHREAD_LIBS)
tests_data_test_loader_SOURCES = tests/data/test_loader.c
tests_data_test_loader_CFLAGS = $(CRIT_CFLAGS)
tests_data_test_loader_LDADD = $(DATA_LIBS) $(CORE_LIBS) $(CRIT_LIBS)
# mkstream: random token streams for the shell tests and the benchmark
tests_data_mkstream_SOURCES = tests/data/mkstream.c
tests_data_mkstream_LDADD = lib/data/libmoedata.a $(CORE_LIBS)
TESTS += tests/data/test_tokstream tests/data/test_loader
TESTS += tests/data/cli.sh
dist_check_SCRIPTS += tests/data/cli.sh
# benchmark helper (run by tests/bench/bench_shard.sh, not a test)
check_PROGRAMS += tests/bench/bench_loader
tests_bench_bench_loader_SOURCES = tests/bench/bench_loader.c
tests_bench_bench_loader_LDADD = $(DATA_LIBS) $(CORE_LIBS)
EXTRA_DIST += tests/bench/bench_shard.sh tests/bench/RESULTS-shard.md \
	tests/data/fuzz_tokstream.c tests/data/fuzz_shard.c
