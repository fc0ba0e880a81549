# tests/train: schedules, options, optimizer, trainer, moe-train/moe-eval.
TRAIN_TEST_LIBS = lib/train/libmoetrain.a $(CORE_LIBS) $(CRIT_LIBS)

check_PROGRAMS += tests/train/test_sched
tests_train_test_sched_SOURCES = tests/train/test_sched.c
tests_train_test_sched_CFLAGS = $(CRIT_CFLAGS)
tests_train_test_sched_LDADD = lib/train/libmoetrain.a lib/model/libmoemodel.a $(CORE_LIBS) $(CRIT_LIBS)
TESTS += tests/train/test_sched

check_PROGRAMS += tests/train/test_optim
tests_train_test_optim_SOURCES = tests/train/test_optim.c tests/train/synth.h
tests_train_test_optim_CFLAGS = $(CRIT_CFLAGS)
tests_train_test_optim_LDADD = $(TRAIN_LIBS) $(CRIT_LIBS)
tests_train_test_optim_LDFLAGS = $(AM_LDFLAGS) $(TRAIN_CUDA_LINK)
TESTS += tests/train/test_optim

check_PROGRAMS += tests/train/mkdata
tests_train_mkdata_SOURCES = tests/train/mkdata.c tests/train/synth.h
tests_train_mkdata_LDADD = $(DATA_LIBS) $(CORE_LIBS)

TESTS += tests/train/cli.sh tests/train/resume.sh tests/train/resume_gpu.sh
dist_check_SCRIPTS += tests/train/cli.sh tests/train/resume.sh tests/train/resume_gpu.sh
EXTRA_DIST += tests/train/gpu.sh tests/train/common.sh
EXTRA_DIST += tests/train/data/micro.json tests/train/data/micro260.json \
	tests/train/data/bytes-tokenizer.json
