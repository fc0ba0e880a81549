# tests/: Criterion suites (one TAP line per test), shell tests of the tools
# (exit 77 = skip), mandoc -Tlint over the man pages.
CRIT_CFLAGS = $(AM_CFLAGS) $(CRITERION_CFLAGS)
CRIT_LIBS = $(CRITERION_LIBS)

check_PROGRAMS += tests/core/test_core
tests_core_test_core_SOURCES = tests/core/test_core.c
tests_core_test_core_CFLAGS = $(CRIT_CFLAGS)
tests_core_test_core_LDADD = $(CORE_LIBS) $(CRIT_LIBS)
TESTS += tests/core/test_core

include tests/data/local.mk
include tests/tok/local.mk
include tests/parquet/local.mk
include tests/fetch/local.mk
include tests/model/local.mk
include tests/train/local.mk
include tests/routes/local.mk
include tests/kernels/local.mk

if HAVE_MANDOC
TESTS += tests/cli/mandoc-lint.sh
endif
dist_check_SCRIPTS += tests/cli/mandoc-lint.sh
TESTS += tests/cli/ktrace.sh tests/cli/smi_phases.sh tests/cli/fa3f_sched.sh tests/cli/sass_mix.sh
EXTRA_DIST += tests/cli/pytool.sh
dist_check_SCRIPTS += tests/cli/ktrace.sh tests/cli/smi_phases.sh tests/cli/fa3f_sched.sh tests/cli/sass_mix.sh
