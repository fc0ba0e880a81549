/* Moving rows between token order (N, D) and expert order (N*K, D): gather
 * (dispatch), its backward (a gather through the inverse permutation, so no
 * atomics), the combine with the gate weights (un-permute) and its backward. */
#include "cuda_common.h"
#include "kernels.h"

/* xg[j] = x[perm[j] / K]; eight bf16 per thread. */
__global__ void gather_kernel(bf16 *xg, const bf16 *x, const int32_t *perm, int S, int K, int D)
{
	size_t v = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	int per = D / 8;
	if (v >= (size_t)S * per)
		return;
	size_t j = v / per, c = (v % per) * 8;
	size_t n = perm[j] / K;
	*(uint4 *)(xg + j * D + c) = *(const uint4 *)(x + n * D + c);
}

/* One warp per token, two columns per lane step.  mode 0: out = sum_k w*y;
 * mode 1: out += sum_k y (scatter-add backward, w unused). */
__global__ void combine_fwd_kernel(bf16 *out, const bf16 *yg, const float *w, const int32_t *inv, int N,
				   int K, int D, int add)
{
	int warps = blockDim.x / 32, lane = threadIdx.x % 32;
	int n = blockIdx.x * warps + threadIdx.x / 32;
	if (n >= N)
		return;
	bf16 *o = out + (size_t)n * D;
	for (int c = lane * 2; c < D; c += 64) {
		float a0 = 0.f, a1 = 0.f;
		if (add) {
			__nv_bfloat162 o2 = *(const __nv_bfloat162 *)(o + c);
			a0 = __low2float(o2);
			a1 = __high2float(o2);
		}
		for (int k = 0; k < K; k++) {
			float wk = add ? 1.f : w[(size_t)n * K + k];
			__nv_bfloat162 y2 =
				*(const __nv_bfloat162 *)(yg + (size_t)inv[(size_t)n * K + k] * D + c);
			a0 += wk * __low2float(y2);
			a1 += wk * __high2float(y2);
		}
		*(__nv_bfloat162 *)(o + c) = __floats2bfloat162_rn(a0, a1);
	}
}

/* dyg[inv[n*K+k]] = w[n,k] * dout[n]; dw[n,k] = <dout[n], yg[inv[n*K+k]]>. */
__global__ void combine_bwd_kernel(bf16 *dyg, float *dw, const bf16 *dout, const bf16 *yg, const float *w,
				   const int32_t *inv, int N, int K, int D)
{
	int warps = blockDim.x / 32, lane = threadIdx.x % 32;
	int n = blockIdx.x * warps + threadIdx.x / 32;
	if (n >= N)
		return;
	const bf16 *d = dout + (size_t)n * D;
	for (int k = 0; k < K; k++) {
		float wk = w[(size_t)n * K + k];
		size_t row = (size_t)inv[(size_t)n * K + k] * D;
		float dot = 0.f;
		for (int c = lane * 2; c < D; c += 64) {
			__nv_bfloat162 d2 = *(const __nv_bfloat162 *)(d + c);
			__nv_bfloat162 y2 = *(const __nv_bfloat162 *)(yg + row + c);
			float d0 = __low2float(d2), d1 = __high2float(d2);
			dot += d0 * __low2float(y2) + d1 * __high2float(y2);
			*(__nv_bfloat162 *)(dyg + row + c) = __floats2bfloat162_rn(wk * d0, wk * d1);
		}
		dot = warp_sum(dot);
		if (lane == 0)
			dw[(size_t)n * K + k] = dot;
	}
}

static int check_width(int D, int mult, struct moe_error *err)
{
	if (D % mult)
		return moe_error_set(err, MOE_EUNSUPPORTED, "permute: width %d is not a multiple of %d", D,
				     mult);
	return 0;
}

extern "C" int moe_cuda_gather(bf16_t *xg, const bf16_t *x, const int32_t *perm, int NK, int K, int D,
			       cudaStream_t s, struct moe_error *err)
{
	int rc;
	if ((rc = check_width(D, 8, err)) != 0 || NK <= 0)
		return rc;
	gather_kernel<<<moe_cdiv((size_t)NK * (D / 8), 256), 256, 0, s>>>((bf16 *)xg, (const bf16 *)x, perm,
									   NK, K, D);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_scatter_add(bf16_t *dx, const bf16_t *dxg, const int32_t *inv, int N, int K, int D,
				    cudaStream_t s, struct moe_error *err)
{
	int rc;
	if ((rc = check_width(D, 2, err)) != 0 || N <= 0)
		return rc;
	combine_fwd_kernel<<<moe_cdiv(N, 8), 256, 0, s>>>((bf16 *)dx, (const bf16 *)dxg, NULL, inv, N, K, D, 1);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_combine_fwd(bf16_t *out, const bf16_t *yg, const float *w, const int32_t *inv,
				    int N, int K, int D, cudaStream_t s, struct moe_error *err)
{
	int rc;
	if ((rc = check_width(D, 2, err)) != 0 || N <= 0)
		return rc;
	combine_fwd_kernel<<<moe_cdiv(N, 8), 256, 0, s>>>((bf16 *)out, (const bf16 *)yg, w, inv, N, K, D, 0);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_combine_bwd(bf16_t *dyg, float *dw, const bf16_t *dout, const bf16_t *yg,
				    const float *w, const int32_t *inv, int N, int K, int D, cudaStream_t s,
				    struct moe_error *err)
{
	int rc;
	if ((rc = check_width(D, 2, err)) != 0 || N <= 0)
		return rc;
	combine_bwd_kernel<<<moe_cdiv(N, 8), 256, 0, s>>>((bf16 *)dyg, dw, (const bf16 *)dout,
							  (const bf16 *)yg, w, inv, N, K, D);
	return CUDA_LAUNCHED(err);
}
