# tests/tok: libmoetok unit tests, moe-tokenize CLI tests, exactness against
# Hugging Face tokenizers / js-tiktoken (npm; skipped when unavailable).
check_PROGRAMS += tests/tok/test_tok
tests_tok_test_tok_SOURCES = tests/tok/test_tok.c
tests_tok_test_tok_CFLAGS = $(CRIT_CFLAGS)
tests_tok_test_tok_LDADD = lib/tok/libmoetok.a $(CORE_LIBS) $(CRIT_LIBS) $(UTF8PROC_LIBS) \
	$(PTHREAD_LIBS)
TESTS += tests/tok/test_tok tests/tok/cli.sh tests/tok/hf.sh
dist_check_SCRIPTS += tests/tok/cli.sh tests/tok/hf.sh
EXTRA_DIST += tests/tok/edge.jsonl tests/tok/gen_edge.py tests/tok/ref.js \
	tests/tok/naive_train.js tests/tok/fuzz.js tests/bench/bench_tok.sh tests/bench/RESULTS-tok.md

# benchmark helper (tests/bench/bench_tok.sh)
noinst_PROGRAMS += tests/bench/bench_tok
tests_bench_bench_tok_SOURCES = tests/bench/bench_tok.c
tests_bench_bench_tok_LDADD = lib/tok/libmoetok.a $(CORE_LIBS) $(UTF8PROC_LIBS) $(PTHREAD_LIBS)
