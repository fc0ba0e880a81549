/* RMSNorm on bf16 rows with fp32 statistics and fp32 weights; the backward
 * accumulates dw through per-warp shared-memory partials (one global add per
 * block and column). */
#include "cuda_common.h"
#include "kernels.h"

/* One warp per row. */
__global__ void rmsnorm_fwd_kernel(bf16 *out, float *rstd, const bf16 *x, const float *w, int N, int D,
				   float eps)
{
	int warps = blockDim.x / 32, lane = threadIdx.x % 32;
	int n = blockIdx.x * warps + threadIdx.x / 32;
	if (n >= N)
		return;
	const bf16 *xr = x + (size_t)n * D;
	float ss = 0.f;
	for (int i = lane; i < D; i += 32) {
		float v = bf2f(xr[i]);
		ss += v * v;
	}
	ss = warp_sum(ss);
	float r = rsqrtf(ss / D + eps);
	bf16 *o = out + (size_t)n * D;
	for (int i = lane; i < D; i += 32)
		o[i] = f2bf(bf2f(xr[i]) * r * w[i]);
	if (lane == 0)
		rstd[n] = r;
}

__global__ void rmsnorm_bwd_kernel(bf16 *dx, float *dw, const bf16 *dout, const bf16 *x, const float *w,
				   const float *rstd, int N, int D)
{
	extern __shared__ float sdw[]; /* (warps, D) */
	int warps = blockDim.x / 32, lane = threadIdx.x % 32, wi = threadIdx.x / 32;
	float *my = sdw + (size_t)wi * D;
	for (int i = lane; i < D; i += 32)
		my[i] = 0.f;
	for (int n = blockIdx.x * warps + wi; n < N; n += gridDim.x * warps) {
		const bf16 *xr = x + (size_t)n * D, *dr = dout + (size_t)n * D;
		float r = rstd[n];
		float dot = 0.f;
		for (int i = lane; i < D; i += 32)
			dot += bf2f(dr[i]) * w[i] * bf2f(xr[i]);
		dot = warp_sum(dot);
		float c = dot * r * r * r / D;
		bf16 *dxr = dx + (size_t)n * D;
		for (int i = lane; i < D; i += 32) {
			float d = bf2f(dr[i]), xv = bf2f(xr[i]);
			dxr[i] = f2bf(d * w[i] * r - c * xv);
			my[i] += d * xv * r;
		}
	}
	__syncthreads();
	if (!dw)
		return;
	for (int i = threadIdx.x; i < D; i += blockDim.x) {
		float s = 0.f;
		for (int k = 0; k < warps; k++)
			s += sdw[(size_t)k * D + i];
		atomicAdd(dw + i, s);
	}
}

extern "C" int moe_cuda_rmsnorm_fwd(bf16_t *out, float *rstd, const bf16_t *x, const float *w, int N,
				    int D, float eps, cudaStream_t s, struct moe_error *err)
{
	if (N <= 0)
		return 0;
	rmsnorm_fwd_kernel<<<moe_cdiv(N, 8), 256, 0, s>>>((bf16 *)out, rstd, (const bf16 *)x, w, N, D, eps);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_rmsnorm_bwd(bf16_t *dx, float *dw, const bf16_t *dout, const bf16_t *x,
				    const float *w, const float *rstd, int N, int D, cudaStream_t s,
				    struct moe_error *err)
{
	if (N <= 0)
		return 0;
	int warps = D > 1536 ? 2 : 8;
	size_t smem = (size_t)warps * D * sizeof(float);
	if (smem > 48 * 1024)
		return moe_error_set(err, MOE_EUNSUPPORTED, "rmsnorm_bwd: width %d too large", D);
	unsigned blocks = moe_cdiv(N, warps * 8);
	if (blocks > 264)
		blocks = 264;
	rmsnorm_bwd_kernel<<<blocks, warps * 32, smem, s>>>((bf16 *)dx, dw, (const bf16 *)dout,
							    (const bf16 *)x, w, rstd, N, D);
	return CUDA_LAUNCHED(err);
}
