# tests/routes: lib/routes unit tests (Criterion) and the moe-routes tool.
check_PROGRAMS += tests/routes/test_routes
tests_routes_test_routes_SOURCES = tests/routes/test_routes.c
tests_routes_test_routes_CFLAGS = $(CRIT_CFLAGS)
tests_routes_test_routes_LDADD = lib/routes/libmoeroutes.a $(CORE_LIBS) $(CRIT_LIBS)
TESTS += tests/routes/test_routes
TESTS += tests/routes/cli.sh
dist_check_SCRIPTS += tests/routes/cli.sh

check_PROGRAMS += tests/routes/test_run
tests_routes_test_run_SOURCES = tests/routes/test_run.c
tests_routes_test_run_CFLAGS = $(CRIT_CFLAGS)
tests_routes_test_run_LDADD = $(ROUTES_LIBS) $(CRIT_LIBS)
TESTS += tests/routes/test_run
EXTRA_DIST += tests/bench/bench_routes.sh tests/bench/parity_routes.sh tests/bench/parity_routes.py \
	tests/bench/RESULTS-routes.md
