/* Helpers of the GPU tests: device detection (tests cr_skip_test() without a
 * device), random bf16-representable inputs, transfers with dtype
 * conversion, poisoned outputs and relative errors. */
#ifndef MOE_TESTS_GPU_UTIL_H
#define MOE_TESTS_GPU_UTIL_H

#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "kernels/kernels.h"

static inline bool gpu_present(void)
{
	int n = 0;
	if (cudaGetDeviceCount(&n) != cudaSuccess) {
		cudaGetLastError();
		return false;
	}
	return n > 0;
}

#define NEED_GPU()                                               \
	do {                                                     \
		if (!gpu_present())                              \
			cr_skip_test("no CUDA device");          \
	} while (0)

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static inline void rng_seed(uint64_t s) { rng_state = s * 0x9e3779b97f4a7c15ull + 1; }

static inline uint64_t rng_u64(void)
{
	uint64_t x = rng_state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return rng_state = x;
}

/* uniform in [-a, a), rounded to bf16 so both sides see identical inputs */
static inline float rng_bf(float a)
{
	float u = (float)((rng_u64() >> 11) * (1.0 / 9007199254740992.0));
	return moe_bf16_to_f32(moe_f32_to_bf16((2.f * u - 1.f) * a));
}

static inline float *rand_bf(size_t n, float a)
{
	float *p = malloc(n * sizeof(float) + 4);
	for (size_t i = 0; i < n; i++)
		p[i] = rng_bf(a);
	return p;
}

static inline void *dmalloc(size_t bytes)
{
	void *p = NULL;
	cr_assert_eq(cudaMalloc(&p, bytes ? bytes : 4), cudaSuccess);
	cr_assert_eq(cudaMemset(p, 0xff, bytes ? bytes : 4), cudaSuccess); /* poison: NaN */
	return p;
}

static inline bf16_t *up_bf(const float *h, size_t n)
{
	uint16_t *t = malloc(n * 2 + 2);
	for (size_t i = 0; i < n; i++)
		t[i] = moe_f32_to_bf16(h[i]);
	bf16_t *d = dmalloc(n * 2);
	cr_assert_eq(cudaMemcpy(d, t, n * 2, cudaMemcpyHostToDevice), cudaSuccess);
	free(t);
	return d;
}

static inline void *up(const void *h, size_t bytes)
{
	void *d = dmalloc(bytes);
	cr_assert_eq(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice), cudaSuccess);
	return d;
}

static inline float *down_bf(const bf16_t *d, size_t n)
{
	uint16_t *t = malloc(n * 2 + 2);
	float *h = malloc(n * 4 + 4);
	cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
	cr_assert_eq(cudaMemcpy(t, d, n * 2, cudaMemcpyDeviceToHost), cudaSuccess);
	for (size_t i = 0; i < n; i++)
		h[i] = moe_bf16_to_f32(t[i]);
	free(t);
	return h;
}

static inline void *down(const void *d, size_t bytes)
{
	void *h = malloc(bytes + 4);
	cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
	cr_assert_eq(cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
	return h;
}

/* ||out - ref|| / ||ref||; NaN anywhere gives +inf. */
static inline double rel_err(const float *out, const float *ref, size_t n)
{
	double num = 0, den = 0;
	for (size_t i = 0; i < n; i++) {
		if (isnan(out[i]) || isnan(ref[i]))
			return INFINITY;
		double d = (double)out[i] - ref[i];
		num += d * d;
		den += (double)ref[i] * ref[i];
	}
	return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* A kernel that must write all n elements of a buffer filled with NaN
 * beforehand (cudaMemset 0xff) left none of them. */
static void __attribute__((unused)) check_all_written(const float *got, size_t n, const char *what)
{
	size_t nan = 0;
	for (size_t i = 0; i < n; i++)
		nan += !isfinite(got[i]);
	cr_expect(nan == 0, "%s: %zu elements never written", what, nan);
}

#define CHECK_REL(out, ref, n, tol, what)                                                   \
	do {                                                                                \
		double e_ = rel_err((out), (ref), (n));                                     \
		cr_log_info("%s: relative error %.3g (tolerance %.3g)", (what), e_, (double)(tol)); \
		cr_expect(e_ <= (tol), "%s: relative error %.3g > %.3g", (what), e_, (double)(tol)); \
	} while (0)

static struct moe_error gerr __attribute__((unused));

/* Launchers in tests pass &gerr. */
#define LAUNCH_OK(expr)                                                                  \
	do {                                                                             \
		int rc_ = (expr);                                                        \
		cr_assert_eq(rc_, 0, "%s: %s", #expr, gerr.msg);                         \
		cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess, "%s", #expr);         \
	} while (0)

#endif
