/* Optimizer-side helpers on flat fp32 buffers: AdamW (torch semantics, fp32
 * state) that also refreshes the bf16 compute copy, sum of squares in double
 * with a fixed reduction order, scaling, dtype conversions, bf16 add. */
#include <math.h>

#include "cuda_common.h"
#include "kernels.h"

__global__ void adamw_kernel(float *p, bf16 *p16, const float *g, float *m, float *v, size_t n, float lr,
			     float b1, float b2, float eps, float decay, float step, float sbc2)
{
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x) {
		float gi = g[i];
		float mi = b1 * m[i] + (1.f - b1) * gi;
		float vi = b2 * v[i] + (1.f - b2) * gi * gi;
		m[i] = mi;
		v[i] = vi;
		float pi = p[i] * decay - step * mi / (sqrtf(vi) / sbc2 + eps);
		p[i] = pi;
		if (p16)
			p16[i] = f2bf(pi);
	}
}

extern "C" int moe_cuda_adamw(float *p, bf16_t *p16, const float *g, float *m, float *v, size_t n, float lr,
			      float beta1, float beta2, float eps, float weight_decay, int64_t t,
			      cudaStream_t s, struct moe_error *err)
{
	if (n == 0)
		return 0;
	double bc1 = 1.0 - pow((double)beta1, (double)t);
	double bc2 = 1.0 - pow((double)beta2, (double)t);
	unsigned blocks = moe_cdiv(n, 256);
	if (blocks > 132 * 16)
		blocks = 132 * 16;
	adamw_kernel<<<blocks, 256, 0, s>>>(p, (bf16 *)p16, g, m, v, n, lr, beta1, beta2, eps,
					    1.0f - lr * weight_decay, (float)((double)lr / bc1),
					    (float)sqrt(bc2));
	return CUDA_LAUNCHED(err);
}

#define SQ_BLOCK 65536 /* elements per partial */

/* The sum of a over a block of 256 threads, in a fixed order (thread 0's
 * result is the total; sh: 256 doubles of shared memory). */
static __device__ double block_sum256(double a, double *sh)
{
	sh[threadIdx.x] = a;
	__syncthreads();
	for (int o = 128; o > 0; o >>= 1) {
		if (threadIdx.x < o)
			sh[threadIdx.x] += sh[threadIdx.x + o];
		__syncthreads();
	}
	return sh[0];
}

__global__ void sumsq_partial_kernel(double *part, const float *x, size_t n)
{
	__shared__ double sh[256];
	size_t b0 = (size_t)blockIdx.x * SQ_BLOCK, b1 = b0 + SQ_BLOCK < n ? b0 + SQ_BLOCK : n;
	double a = 0;
	for (size_t i = b0 + threadIdx.x; i < b1; i += 256) {
		double v = x[i];
		a += v * v;
	}
	a = block_sum256(a, sh);
	if (threadIdx.x == 0)
		part[blockIdx.x] = a;
}

__global__ void sumsq_finish_kernel(double *acc, const double *part, int nb)
{
	__shared__ double sh[256];
	double a = 0;
	for (int i = threadIdx.x; i < nb; i += 256)
		a += part[i];
	a = block_sum256(a, sh);
	if (threadIdx.x == 0)
		*acc = a;
}

extern "C" size_t moe_cuda_sumsq_scratch(size_t n)
{
	return (size_t)moe_cdiv(n ? n : 1, SQ_BLOCK) * sizeof(double);
}

extern "C" int moe_cuda_sumsq(double *acc, void *scratch, const float *x, size_t n, cudaStream_t s,
			      struct moe_error *err)
{
	int rc;
	if (n == 0)
		return CUDA_OK(cudaMemsetAsync(acc, 0, sizeof(double), s), err);
	unsigned nb = moe_cdiv(n, SQ_BLOCK);
	sumsq_partial_kernel<<<nb, 256, 0, s>>>((double *)scratch, x, n);
	if ((rc = CUDA_LAUNCHED(err)) != 0)
		return rc;
	sumsq_finish_kernel<<<1, 256, 0, s>>>(acc, (const double *)scratch, (int)nb);
	return CUDA_LAUNCHED(err);
}

__global__ void scale_kernel(float *x, size_t n, float sc)
{
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
		x[i] *= sc;
}

__global__ void to_bf16_kernel(bf16 *dst, const float *src, size_t n)
{
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
		dst[i] = f2bf(src[i]);
}

__global__ void to_f32_kernel(float *dst, const bf16 *src, size_t n)
{
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
		dst[i] = bf2f(src[i]);
}

/* y += x; eight elements per step when both are 16-byte aligned and n % 8 == 0. */
__global__ void add_kernel(bf16 *y, const bf16 *x, size_t n, int vec)
{
	size_t stride = (size_t)gridDim.x * blockDim.x;
	if (vec) {
		for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n / 8; i += stride) {
			uint4 a = ((const uint4 *)y)[i], b = ((const uint4 *)x)[i];
			__nv_bfloat162 *pa = (__nv_bfloat162 *)&a;
			const __nv_bfloat162 *pb = (const __nv_bfloat162 *)&b;
#pragma unroll
			for (int j = 0; j < 4; j++) {
				float2 fa = __bfloat1622float2(pa[j]), fb = __bfloat1622float2(pb[j]);
				pa[j] = __floats2bfloat162_rn(fa.x + fb.x, fa.y + fb.y);
			}
			((uint4 *)y)[i] = a;
		}
		return;
	}
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
		y[i] = f2bf(bf2f(y[i]) + bf2f(x[i]));
}

__global__ void axpy_kernel(float *y, const float *x, size_t n, float a)
{
	size_t stride = (size_t)gridDim.x * blockDim.x;
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
		y[i] += a * x[i];
}

__global__ void scale_bf16_kernel(bf16 *x, size_t n, float a)
{
	size_t stride = (size_t)gridDim.x * blockDim.x;
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
		x[i] = f2bf(bf2f(x[i]) * a);
}

static unsigned grid_for(size_t n)
{
	unsigned b = moe_cdiv(n, 256);
	return b > 132 * 32 ? 132 * 32 : (b ? b : 1);
}

extern "C" int moe_cuda_scale(float *x, size_t n, float sc, cudaStream_t s, struct moe_error *err)
{
	if (n == 0)
		return 0;
	scale_kernel<<<grid_for(n), 256, 0, s>>>(x, n, sc);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_to_bf16(bf16_t *dst, const float *src, size_t n, cudaStream_t s, struct moe_error *err)
{
	if (n == 0)
		return 0;
	to_bf16_kernel<<<grid_for(n), 256, 0, s>>>((bf16 *)dst, src, n);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_to_f32(float *dst, const bf16_t *src, size_t n, cudaStream_t s, struct moe_error *err)
{
	if (n == 0)
		return 0;
	to_f32_kernel<<<grid_for(n), 256, 0, s>>>(dst, (const bf16 *)src, n);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_add(bf16_t *y, const bf16_t *x, size_t n, cudaStream_t s, struct moe_error *err)
{
	if (n == 0)
		return 0;
	int vec = n % 8 == 0 && ((uintptr_t)y % 16) == 0 && ((uintptr_t)x % 16) == 0;
	add_kernel<<<grid_for(vec ? n / 8 : n), 256, 0, s>>>((bf16 *)y, (const bf16 *)x, n, vec);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_axpy(float *y, const float *x, size_t n, float a, cudaStream_t s, struct moe_error *err)
{
	if (n == 0)
		return 0;
	axpy_kernel<<<grid_for(n), 256, 0, s>>>(y, x, n, a);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_scale_bf16(bf16_t *x, size_t n, float a, cudaStream_t s, struct moe_error *err)
{
	if (n == 0)
		return 0;
	scale_bf16_kernel<<<grid_for(n), 256, 0, s>>>((bf16 *)x, n, a);
	return CUDA_LAUNCHED(err);
}
