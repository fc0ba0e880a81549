# tests/model: gradient checks (double-precision instantiation of lib/model),
# model and checkpoint tests.
check_PROGRAMS += tests/model/test_grad
tests_model_test_grad_SOURCES = tests/model/test_grad.c
tests_model_test_grad_CFLAGS = $(CRIT_CFLAGS)
tests_model_test_grad_LDADD = $(CORE_LIBS) $(CRIT_LIBS)
TESTS += tests/model/test_grad

check_PROGRAMS += tests/model/test_model
tests_model_test_model_SOURCES = tests/model/test_model.c
tests_model_test_model_CFLAGS = $(CRIT_CFLAGS)
tests_model_test_model_LDADD = lib/model/libmoemodel.a $(CORE_LIBS) $(CRIT_LIBS)
TESTS += tests/model/test_model

# dump_ref: a checkpoint + one forward/backward for tests/bench/parity_hf.py
noinst_PROGRAMS += tests/model/dump_ref
tests_model_dump_ref_SOURCES = tests/model/dump_ref.c
tests_model_dump_ref_LDADD = lib/model/libmoemodel.a $(CORE_LIBS)
EXTRA_DIST += tests/bench/parity_hf.py tests/bench/parity/olmoe-small.json \
	tests/bench/parity/ext-seedlike.json tests/bench/parity/ext-megablocks.json
TESTS += tests/model/parity.sh
dist_check_SCRIPTS += tests/model/parity.sh
