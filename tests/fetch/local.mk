# tests/fetch: moe-fetch list/get against a local imitation of the Hub.
TESTS += tests/fetch/hub.sh
dist_check_SCRIPTS += tests/fetch/hub.sh
EXTRA_DIST += tests/fetch/hubserver.py

check_PROGRAMS += tests/fetch/test_fetch
tests_fetch_test_fetch_SOURCES = tests/fetch/test_fetch.c
tests_fetch_test_fetch_CFLAGS = $(CRIT_CFLAGS)
tests_fetch_test_fetch_LDADD = lib/fetch/libmoefetch.a $(CORE_LIBS) $(CRIT_LIBS) $(CURL_LIBS) $(PTHREAD_LIBS)
TESTS += tests/fetch/test_fetch
