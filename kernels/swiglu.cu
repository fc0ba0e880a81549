/* SwiGLU on the fused gate|up GEMM output: h13 (M, 2I) bf16 holds g in
 * columns [0, I) and u in [I, 2I); act (M, I) = silu(g) * u. */
#include "cuda_common.h"
#include "kernels.h"

/* Eight elements (16 bytes) per thread when I % 8 == 0. */
__global__ void swiglu_fwd_kernel(bf16 *act, const bf16 *h13, size_t M, int I)
{
	MOE_PDL_ENTRY();
	size_t v = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	size_t per_row = I / 8;
	if (v >= M * per_row)
		return;
	size_t m = v / per_row, c = (v % per_row) * 8;
	const bf16 *g = h13 + m * 2 * I + c, *u = g + I;
	uint4 gv = *(const uint4 *)g, uv = *(const uint4 *)u, ov;
	const bf16 *ga = (const bf16 *)&gv, *ua = (const bf16 *)&uv;
	bf16 *oa = (bf16 *)&ov;
#pragma unroll
	for (int j = 0; j < 8; j++) {
		oa[j] = f2bf(moe_swiglu_h(bf2f(ga[j]), bf2f(ua[j])));
	}
	*(uint4 *)(act + m * I + c) = ov;
}

/* act (optional): the forward's output again, computed exactly as
 * swiglu_fwd_kernel does (backward recomputes it instead of keeping it). */
__global__ void swiglu_bwd_kernel(bf16 *dh13, bf16 *act, const bf16 *dact, const bf16 *h13, size_t M, int I)
{
	MOE_PDL_ENTRY();
	size_t v = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	size_t per_row = I / 8;
	if (v >= M * per_row)
		return;
	size_t m = v / per_row, c = (v % per_row) * 8;
	const bf16 *g = h13 + m * 2 * I + c, *u = g + I;
	uint4 gv = *(const uint4 *)g, uv = *(const uint4 *)u, dv = *(const uint4 *)(dact + m * I + c);
	uint4 dgv, duv, ov;
	const bf16 *ga = (const bf16 *)&gv, *ua = (const bf16 *)&uv, *da = (const bf16 *)&dv;
	bf16 *dga = (bf16 *)&dgv, *dua = (bf16 *)&duv, *oa = (bf16 *)&ov;
#pragma unroll
	for (int j = 0; j < 8; j++) {
		float dg, du, h;
		moe_swiglu_grads(bf2f(ga[j]), bf2f(ua[j]), bf2f(da[j]), &dg, &du, &h);
		dua[j] = f2bf(du);
		dga[j] = f2bf(dg);
		oa[j] = f2bf(h);
	}
	*(uint4 *)(dh13 + m * 2 * I + c) = dgv;
	*(uint4 *)(dh13 + m * 2 * I + I + c) = duv;
	if (act)
		*(uint4 *)(act + m * I + c) = ov;
}

extern "C" int moe_cuda_swiglu_fwd(bf16_t *act, const bf16_t *h13, size_t M, int I, cudaStream_t s,
				   struct moe_error *err)
{
	if (I % 8)
		return moe_error_set(err, MOE_EUNSUPPORTED, "swiglu: width %d is not a multiple of 8", I);
	if (M == 0)
		return 0;
	moe_launch(swiglu_fwd_kernel, moe_cdiv(M * (I / 8), 256), 256, 0, s, (bf16 *)act, (const bf16 *)h13, M, I);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_swiglu_bwd(bf16_t *dh13, bf16_t *act, const bf16_t *dact, const bf16_t *h13, size_t M,
				   int I, cudaStream_t s, struct moe_error *err)
{
	if (I % 8)
		return moe_error_set(err, MOE_EUNSUPPORTED, "swiglu: width %d is not a multiple of 8", I);
	if (M == 0)
		return 0;
	moe_launch(swiglu_bwd_kernel, moe_cdiv(M * (I / 8), 256), 256, 0, s, (bf16 *)dh13, (bf16 *)act,
		   (const bf16 *)dact, (const bf16 *)h13, M, I);
	return CUDA_LAUNCHED(err);
}
