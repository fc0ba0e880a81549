# tests/kernels: the CUDA kernels against their CPU references
# (test_kernels) and a whole training step of the CUDA backend against the
# CPU backend (test_backend).  Built when nvcc works; each test
# cr_skip_test()s without a device.  `make check-gpu` runs just these (on the
# GPU machine).
GPU_TESTS =
if HAVE_CUDA
KTEST_LDADD = kernels/libmoekernels.a lib/model/libmoemodel.a $(CORE_LIBS) $(CRIT_LIBS) \
	$(CUDA_LIBS) -lstdc++
check_PROGRAMS += tests/kernels/test_kernels tests/kernels/test_backend
tests_kernels_test_kernels_SOURCES = tests/kernels/test_kernels.c tests/kernels/gpu_util.h
tests_kernels_test_kernels_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir) $(CUDA_CPPFLAGS)
tests_kernels_test_kernels_CFLAGS = $(CRIT_CFLAGS)
tests_kernels_test_kernels_LDFLAGS = $(AM_LDFLAGS) $(CUDA_LDFLAGS)
tests_kernels_test_kernels_LDADD = $(KTEST_LDADD)
tests_kernels_test_backend_SOURCES = tests/kernels/test_backend.c tests/kernels/gpu_util.h
tests_kernels_test_backend_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir) $(CUDA_CPPFLAGS)
tests_kernels_test_backend_CFLAGS = $(CRIT_CFLAGS)
tests_kernels_test_backend_LDFLAGS = $(AM_LDFLAGS) $(CUDA_LDFLAGS)
tests_kernels_test_backend_LDADD = lib/train/libmoetrain.a kernels/libmoekernels.a lib/model/libmoemodel.a \
	$(DATA_LIBS) $(CORE_LIBS) $(CRIT_LIBS) $(CUDA_LIBS) -lstdc++
GPU_TESTS += tests/kernels/test_kernels tests/kernels/test_backend tests/train/resume_gpu.sh
TESTS += tests/kernels/test_kernels tests/kernels/test_backend
endif

check-gpu:
	@if test -z '$(GPU_TESTS)'; then echo 'check-gpu: this build has no CUDA support' >&2; exit 1; fi
	$(MAKE) $(AM_MAKEFLAGS) check TESTS='$(GPU_TESTS)'
.PHONY: check-gpu

# the training-step benchmark driven by tests/bench/bench_train.sh
if HAVE_CUDA
noinst_PROGRAMS += tests/bench/bench_cuda
tests_bench_bench_cuda_SOURCES = tests/bench/bench_cuda.c
tests_bench_bench_cuda_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir) $(CUDA_CPPFLAGS)
tests_bench_bench_cuda_LDFLAGS = $(AM_LDFLAGS) $(CUDA_LDFLAGS)
tests_bench_bench_cuda_LDADD = lib/train/libmoetrain.a kernels/libmoekernels.a lib/model/libmoemodel.a \
	$(DATA_LIBS) $(CORE_LIBS) \
	$(CUDA_LIBS) -lstdc++
endif
if HAVE_CUDA
noinst_PROGRAMS += tests/bench/bench_kernels
tests_bench_bench_kernels_SOURCES = tests/bench/bench_kernels.c
tests_bench_bench_kernels_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir) $(CUDA_CPPFLAGS)
tests_bench_bench_kernels_LDFLAGS = $(AM_LDFLAGS) $(CUDA_LDFLAGS)
tests_bench_bench_kernels_LDADD = kernels/libmoekernels.a $(CORE_LIBS) $(CUDA_LIBS) -lstdc++
noinst_PROGRAMS += tests/bench/bench_gemm
tests_bench_bench_gemm_SOURCES = tests/bench/bench_gemm.c
tests_bench_bench_gemm_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir) $(CUDA_CPPFLAGS)
tests_bench_bench_gemm_LDFLAGS = $(AM_LDFLAGS) $(CUDA_LDFLAGS)
tests_bench_bench_gemm_LDADD = kernels/libmoekernels.a $(CORE_LIBS) $(CUDA_LIBS) -lstdc++
endif
EXTRA_DIST += tests/bench/bench_train.sh tests/bench/RESULTS-cuda.md tests/bench/RESULTS-experts.md \
	tests/bench/RESULTS-attention.md tests/bench/RESULTS-tma.md tests/bench/RESULTS-memkernels.md
