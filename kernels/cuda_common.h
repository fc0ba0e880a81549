/*
 * Shared helpers of the CUDA kernels (C++ only, included by kernels/ *.cu):
 * error checks that turn CUDA and cuBLAS failures into a struct moe_error
 * (never exit), bf16 conversions and 16-byte loads/stores, warp reductions.
 */
#ifndef MOE_CUDA_COMMON_H
#define MOE_CUDA_COMMON_H

#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cublas_v2.h>

extern "C" {
#include "core/core.h"
}

/* Record a failed CUDA call (expression, function, file, line) in err;
 * returns MOE_ECUDA, or 0 when e is cudaSuccess. */
static inline int moe_cuda_check(cudaError_t e, const char *expr, const char *func, const char *file,
				 int line, struct moe_error *err)
{
	if (e == cudaSuccess)
		return 0;
	return moe_error_set(err, MOE_ECUDA, "%s:%d: %s: %s failed: %s", file, line, func, expr,
			     cudaGetErrorString(e));
}

static inline int moe_cublas_check(cublasStatus_t s, const char *expr, const char *func,
				   const char *file, int line, struct moe_error *err)
{
	if (s == CUBLAS_STATUS_SUCCESS)
		return 0;
	return moe_error_set(err, MOE_ECUDA, "%s:%d: %s: %s failed: cuBLAS status %d", file, line, func,
			     expr, (int)s);
}

/* Usage: if ((rc = CUDA_OK(cudaMalloc(&p, n), err)) != 0) goto out; */
#define CUDA_OK(expr, err) moe_cuda_check((expr), #expr, __func__, __FILE__, __LINE__, (err))
#define CUBLAS_OK(expr, err) moe_cublas_check((expr), #expr, __func__, __FILE__, __LINE__, (err))
/* The status of the last kernel launch (use right after <<<...>>>). */
#define CUDA_LAUNCHED(err) moe_cuda_check(cudaGetLastError(), "kernel launch", __func__, __FILE__, \
					  __LINE__, (err))

/* Environment variable name set to exactly val (the kernels' and the
 * backend's switches). */
static inline bool env_is(const char *name, const char *val)
{
	const char *v = getenv(name);
	return v && strcmp(v, val) == 0;
}

/* An integer switch: *v = dflt where name is unset; false where it is set
 * but not an integer in [lo, hi] (the caller's error names it). */
static inline bool env_long(const char *name, long dflt, long lo, long hi, long *v)
{
	const char *s = getenv(name);
	char *e = NULL;
	*v = dflt;
	if (!s)
		return true;
	*v = strtol(s, &e, 10);
	return e != s && !*e && *v >= lo && *v <= hi;
}

/* A named switch: *v = 0 (names[0], the default) where name is unset or
 * empty, else the index of its value among the n names; false where the
 * value is none of them (the caller's error names it). */
static inline bool env_choice(const char *name, const char *const *names, int n, int *v)
{
	const char *s = getenv(name);
	*v = 0;
	if (!s || !*s)
		return true;
	for (int i = 0; i < n; i++)
		if (!strcmp(s, names[i])) {
			*v = i;
			return true;
		}
	return false;
}

/* Programmatic dependent launch (sm_90; session 10).  Every kernel of the
 * backend starts with MOE_PDL_ENTRY() and is launched by moe_launch, which
 * (unless MOE_CUDA_PDL=0) lets the driver start it before the kernel ahead of it
 * in the stream has finished: its blocks wait in griddepcontrol.wait until
 * that kernel has completed and its writes are visible.  The wait is the
 * kernel's first statement: nothing is read or written before it, so the
 * order of the stream is kept exactly (a kernel that waited finished after
 * the one ahead of it, and so after everything before).  No kernel issues
 * griddepcontrol.launch_dependents, so the next kernel is released as this
 * one's blocks exit.  Without the attribute the wait does nothing.
 * Measured (H100, seed-base step, tests/bench/RESULTS-cuda.md, session 10):
 * with launch_dependents right after the wait, steps were 1.1-1.7 ms
 * slower than without the attribute (call 57). */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define MOE_PDL_ENTRY() asm volatile("griddepcontrol.wait;\n" ::: "memory")
#else
#define MOE_PDL_ENTRY() \
	do {            \
	} while (0)
#endif

/* MOE_CUDA_PDL=0: kernels launched without the attribute (comparisons) */
static inline bool moe_pdl_on(void)
{
	static int on = -1;
	if (on < 0)
		on = !env_is("MOE_CUDA_PDL", "0");
	return on != 0;
}

/* kernel<<<grid, block, smem, s>>>(args...) with programmatic dependent
 * launch (above); check with CUDA_LAUNCHED as after <<<>>>. */
template <typename... P, typename... A>
static inline void moe_launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, A &&...args)
{
	cudaLaunchAttribute at[1];
	at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
	at[0].val.programmaticStreamSerializationAllowed = 1;
	cudaLaunchConfig_t cfg = {};
	cfg.gridDim = grid;
	cfg.blockDim = block;
	cfg.dynamicSmemBytes = smem;
	cfg.stream = s;
	cfg.attrs = at;
	cfg.numAttrs = moe_pdl_on() ? 1 : 0;
	(void)cudaLaunchKernelEx(&cfg, kernel, static_cast<A &&>(args)...);
}

typedef __nv_bfloat16 bf16;

struct moe_cuda_blas;
/* The cuBLAS handle of a moe_cuda_blas (gemm.cu), for C++ callers. */
extern "C" cublasHandle_t moe_cuda_blas_handle(struct moe_cuda_blas *b);

static __device__ __forceinline__ float bf2f(bf16 x) { return __bfloat162float(x); }
static __device__ __forceinline__ bf16 f2bf(float x) { return __float2bfloat16(x); }

/* Eight bf16 (16 bytes, p 16-byte aligned) to and from fp32. */
static __device__ __forceinline__ void ld8(float *f, const bf16 *p)
{
	uint4 u = *(const uint4 *)p;
	const bf16 *h = (const bf16 *)&u;
#pragma unroll
	for (int j = 0; j < 8; j++)
		f[j] = bf2f(h[j]);
}

/* the eight bf16 of u to fp32 */
static __device__ __forceinline__ void unpack8(float *f, uint4 u)
{
	const bf16 *h = (const bf16 *)&u;
#pragma unroll
	for (int j = 0; j < 8; j++)
		f[j] = bf2f(h[j]);
}

/* eight floats from shared or global memory (p 16-byte aligned) */
static __device__ __forceinline__ void lds8(float *f, const float *p)
{
	float4 a = *(const float4 *)p, b = *(const float4 *)(p + 4);
	f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}

/* eight floats through the read-only cache (p 16-byte aligned) */
static __device__ __forceinline__ void ld8g(float *f, const float *p)
{
	float4 a = __ldg((const float4 *)p), b = __ldg((const float4 *)(p + 4));
	f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}

static __device__ __forceinline__ void st8(bf16 *p, const float *f)
{
	uint4 u;
	bf16 *h = (bf16 *)&u;
#pragma unroll
	for (int j = 0; j < 8; j++)
		h[j] = f2bf(f[j]);
	*(uint4 *)p = u;
}

/* the inclusive prefix sum of v over the lanes of a full warp (lane: this
 * thread's lane) */
static __device__ __forceinline__ int warp_incl_scan(int v, int lane)
{
#pragma unroll
	for (int o = 1; o < 32; o <<= 1) {
		int u = __shfl_up_sync(0xffffffffu, v, o);
		if (lane >= o)
			v += u;
	}
	return v;
}

static __device__ __forceinline__ float warp_sum(float v)
{
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

/* The sum of v over a block of W warps, the same value in every thread:
 * the warps' sums added in warp order (deterministic).  rs alternates
 * between calls (it = 0, 1, 0, ...) so that one barrier a call suffices:
 * a warp that writes rs[it] again has passed the next call's barrier, so
 * every thread has read it.  Every thread of the block must call it. */
template <int W>
static __device__ __forceinline__ float block_sum_alt(float v, float (*rs)[W], int it)
{
	v = warp_sum(v);
	if (threadIdx.x % 32 == 0)
		rs[it][threadIdx.x / 32] = v;
	__syncthreads();
	float t = 0.f;
#pragma unroll
	for (int q = 0; q < W; q++)
		t += rs[it][q];
	return t;
}

static __device__ __forceinline__ float warp_max(float v)
{
	for (int o = 16; o > 0; o >>= 1)
		v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
	return v;
}

/* dw[i] += the sum of the n partial rows part[q * D + i] (shared memory,
 * written before a __syncthreads), by the block's threads: the norms'
 * weight gradients, one atomic a column a block (their order, and so the
 * last bits, vary from run to run).  own_row: stored instead into the
 * block's own row dw + blockIdx.x * D of a (grid, D) buffer that
 * moe_cuda_colsum_add then adds up in block order (deterministic). */
static __device__ __forceinline__ void block_rows_sum_add(float *dw, const float *part, int n, int D,
							  bool own_row = false)
{
	float *dst = own_row ? dw + (size_t)blockIdx.x * D : dw; /* own_row: no atomics */
	for (int i = threadIdx.x; i < D; i += blockDim.x) {
		float s = 0.f;
		for (int q = 0; q < n; q++)
			s += part[(size_t)q * D + i];
		if (own_row)
			dst[i] = s;
		else
			atomicAdd(dst + i, s);
	}
}

/* A thread's eight dw sums at dst: stored (own: dst is in the block's own
 * row of a (grid, D) buffer that moe_cuda_colsum_add adds up in block
 * order) or added with fp32 atomics. */
static __device__ __forceinline__ void dw_put8(float *dst, const float *v, bool own)
{
	if (own) {
		*(float4 *)dst = make_float4(v[0], v[1], v[2], v[3]);
		*(float4 *)(dst + 4) = make_float4(v[4], v[5], v[6], v[7]);
	} else {
#pragma unroll
		for (int j = 0; j < 8; j++)
			atomicAdd(dst + j, v[j]);
	}
}

static inline unsigned moe_cdiv(size_t a, size_t b) { return (unsigned)((a + b - 1) / b); }

/* The template instantiations a kernel family has, chosen at run time:
 * LAUNCH(k) for N = k below the family's largest, else LAUNCH(largest)
 * (4, 6 or 8). */
#define MOE_CASES3(LAUNCH) case 1: LAUNCH(1); break; case 2: LAUNCH(2); break; case 3: LAUNCH(3); break;
#define MOE_CASES5(LAUNCH) MOE_CASES3(LAUNCH) case 4: LAUNCH(4); break; case 5: LAUNCH(5); break;
#define MOE_CASES7(LAUNCH) MOE_CASES5(LAUNCH) case 6: LAUNCH(6); break; case 7: LAUNCH(7); break;
#define MOE_SWITCH4(N, LAUNCH) switch (N) { MOE_CASES3(LAUNCH) default: LAUNCH(4); break; }
#define MOE_SWITCH6(N, LAUNCH) switch (N) { MOE_CASES5(LAUNCH) default: LAUNCH(6); break; }
#define MOE_SWITCH8(N, LAUNCH) switch (N) { MOE_CASES7(LAUNCH) default: LAUNCH(8); break; }

/* The multiprocessors of the current device (132 when it cannot be asked),
 * asked once: the persistent kernels' grids. */
static inline int moe_cuda_sms(void)
{
	static int n;
	int dev = 0;
	if (n <= 0 && (cudaGetDevice(&dev) != cudaSuccess ||
		       cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)) {
		cudaGetLastError();
		n = 132;
	}
	return n;
}

/* Resident blocks of kern on this device (at least 1), for grid-stride
 * launches that fill the card once.  The queries cost microseconds and the
 * launchers ask at every launch, so the last answers are kept. */
template <typename K> static unsigned resident_blocks(K kern, int threads, size_t smem)
{
	static struct {
		K kern;
		int dev, threads;
		size_t smem;
		unsigned n;
	} memo[8];
	static int nmemo;
	int dev = 0, sms = 132, per = 1;
	cudaGetDevice(&dev);
	for (int i = 0; i < nmemo; i++)
		if (memo[i].kern == kern && memo[i].dev == dev && memo[i].threads == threads && memo[i].smem == smem)
			return memo[i].n;
	cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
	if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per, kern, threads, smem) != cudaSuccess || per < 1)
		per = 1;
	unsigned n = (unsigned)(sms * per);
	if (nmemo < 8) {
		memo[nmemo].kern = kern, memo[nmemo].dev = dev, memo[nmemo].threads = threads;
		memo[nmemo].smem = smem, memo[nmemo].n = n;
		nmemo++;
	}
	return n;
}

/* Blocks for a grid-stride loop over `units` (per: units a block takes
 * per sweep; at most cap blocks): the fewest sweeps the card allows, then
 * as few blocks as give each at most that many sweeps, so that the last
 * sweep is not left to a fraction of the warps. */
static inline unsigned balanced_blocks(size_t units, unsigned per, unsigned cap)
{
	size_t sweeps = (units + (size_t)per * cap - 1) / ((size_t)per * cap);
	return (unsigned)((units + sweeps * per - 1) / (sweeps * per));
}

#endif
