# tests/fetch: moe-fetch list/get against a local imitation of the Hub.
TESTS += tests/fetch/hub.sh
dist_check_SCRIPTS += tests/fetch/hub.sh
EXTRA_DIST += tests/fetch/hubserver.py
