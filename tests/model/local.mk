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
