# tests/train: schedules, options, optimizer, checkpoints, moe-train/moe-eval.
TRAIN_TEST_LIBS = lib/train/libmoetrain.a $(CORE_LIBS) $(CRIT_LIBS)

check_PROGRAMS += tests/train/test_sched
tests_train_test_sched_SOURCES = tests/train/test_sched.c
tests_train_test_sched_CFLAGS = $(CRIT_CFLAGS)
tests_train_test_sched_LDADD = $(TRAIN_TEST_LIBS)
TESTS += tests/train/test_sched
