/* SwiGLU on the fused gate|up GEMM output: h13 (M, 2I) bf16 holds g in
 * columns [0, I) and u in [I, 2I); act (M, I) = silu(g) * u. */
#include "cuda_common.h"
#include "kernels.h"

/* Eight elements (16 bytes) per thread when I % 8 == 0; h13's rows in
 * groups of G, ldg apart (row m at (m / G) ldg + (m % G) 2I; packed: G 1,
 * ldg 2I); act packed. */
__global__ void swiglu_fwd_kernel(bf16 *act, const bf16 *h13, size_t M, int I, int G, int ldg)
{
	MOE_PDL_ENTRY();
	size_t v = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	size_t per_row = I / 8;
	if (v >= M * per_row)
		return;
	size_t m = v / per_row, c = (v % per_row) * 8;
	const bf16 *g = h13 + m / G * ldg + m % G * 2 * I + c, *u = g + I;
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
 * swiglu_fwd_kernel does (backward recomputes it instead of keeping it);
 * dh13's rows where h13's are, dact packed. */
__global__ void swiglu_bwd_kernel(bf16 *dh13, bf16 *act, const bf16 *dact, const bf16 *h13, size_t M, int I, int G,
				  int ldg)
{
	MOE_PDL_ENTRY();
	size_t v = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	size_t per_row = I / 8;
	if (v >= M * per_row)
		return;
	size_t m = v / per_row, c = (v % per_row) * 8, r = m / G * ldg + m % G * 2 * I;
	const bf16 *g = h13 + r + c, *u = g + I;
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
	*(uint4 *)(dh13 + r + c) = dgv;
	*(uint4 *)(dh13 + r + I + c) = duv;
	if (act)
		*(uint4 *)(act + m * I + c) = ov;
}

/* The routed experts' SwiGLU backward with the gate weights applied here
 * (the backend's expert_combine_down_bwd): row j of du (M, I) is the down
 * projection's input gradient of dout's row, unweighted, and w_j = wg[j] =
 * topk_w[perm[j]] (in expert order: no load waits on another); dgu from dh
 * = w_j du_j, h recomputed as swiglu_fwd_kernel computes it and written as
 * bf16(w_j h), and dtopk_w[perm[j]] = du_j . h_j
 * (h as the forward stored it, bf16; fp32 sum): <dout, h W^T> = <dout W, h>.
 * As swiglu_bwd_kernel, eight columns (16 bytes) a thread: a block holds R
 * rows of tpr threads each, tpr = I / 8 rounded up to whole warps (at most
 * 256; more columns a thread past that); each warp sums its part, and each
 * row's first thread adds its warps' parts in order (no atomics: the same
 * bits every run).  With w read through perm (a load waiting on a load), a
 * warp a row moved 2.45 TB/s where swiglu_bwd_kernel moves 3.0, rows of I /
 * 8 threads whose first thread summed them all 2.59, this layout 2.52 (H100,
 * session 12, calls 73-75). */
__global__ void __launch_bounds__(256)
	swiglu_bwd_rows_kernel(bf16 *dh13, bf16 *hw, float *dtopk_w, const bf16 *du, const bf16 *h13, const float *wg,
			       const int32_t *perm, int M, int I, int tpr)
{
	MOE_PDL_ENTRY();
	__shared__ float sw_part[8]; /* a warp's part */
	const int per = I / 8, t = threadIdx.x % tpr, r = threadIdx.x / tpr;
	const int j = blockIdx.x * (blockDim.x / tpr) + r;
	float dot = 0.f;
	if (j < M) {
		const float w = __ldg(wg + j);
		const uint4 *g = (const uint4 *)(h13 + (size_t)j * 2 * I), *u = g + per;
		const uint4 *d = (const uint4 *)(du + (size_t)j * I);
		uint4 *dg = (uint4 *)(dh13 + (size_t)j * 2 * I), *dd = dg + per, *ho = (uint4 *)(hw + (size_t)j * I);
		for (int c = t; c < per; c += tpr) {
			uint4 gv = g[c], uv = u[c], dv = d[c], dgv, duv, ov;
			const bf16 *ga = (const bf16 *)&gv, *ua = (const bf16 *)&uv, *da = (const bf16 *)&dv;
			bf16 *dga = (bf16 *)&dgv, *dua = (bf16 *)&duv, *oa = (bf16 *)&ov;
#pragma unroll
			for (int i = 0; i < 8; i++) {
				const float dz = bf2f(da[i]);
				float gg, uu, h;
				moe_swiglu_grads(bf2f(ga[i]), bf2f(ua[i]), w * dz, &gg, &uu, &h);
				dot += dz * bf2f(f2bf(h));
				dga[i] = f2bf(gg);
				dua[i] = f2bf(uu);
				oa[i] = f2bf(w * h);
			}
			dg[c] = dgv;
			dd[c] = duv;
			ho[c] = ov;
		}
	}
	dot = warp_sum(dot); /* tpr is whole warps: a warp is one row's */
	if (threadIdx.x % 32 == 0)
		sw_part[threadIdx.x / 32] = dot;
	__syncthreads();
	if (t == 0 && j < M) {
		float s = 0.f;
		for (int q = 0; q < tpr / 32; q++)
			s += sw_part[threadIdx.x / 32 + q];
		dtopk_w[__ldg(perm + j)] = s;
	}
}

/* 16-byte vectors: the width, the group stride and the pointers */
static int swiglu_shape_ok(int I, int G, int ldg, const void *a, const void *b, const void *c, const void *d,
			   struct moe_error *err)
{
	if (I % 8)
		return moe_error_set(err, MOE_EUNSUPPORTED, "swiglu: width %d is not a multiple of 8", I);
	if (G < 1 || ldg % 8 || ldg < G * 2 * I || ((uintptr_t)a | (uintptr_t)b | (uintptr_t)c | (uintptr_t)d) % 16)
		return moe_error_set(err, MOE_EUNSUPPORTED,
				     "swiglu: groups of %d rows %d apart (width %d) or pointers not 16-byte aligned", G,
				     ldg, I);
	return 0;
}

extern "C" int moe_cuda_swiglu_fwd_ld(bf16_t *act, const bf16_t *h13, size_t M, int I, int G, int ldg,
				      cudaStream_t s, struct moe_error *err)
{
	int rc = swiglu_shape_ok(I, G, ldg, act, h13, NULL, NULL, err);
	if (rc < 0 || M == 0)
		return rc;
	moe_launch(swiglu_fwd_kernel, moe_cdiv(M * (I / 8), 256), 256, 0, s, (bf16 *)act, (const bf16 *)h13, M, I, G,
		   ldg);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_swiglu_fwd(bf16_t *act, const bf16_t *h13, size_t M, int I, cudaStream_t s,
				   struct moe_error *err)
{
	return moe_cuda_swiglu_fwd_ld(act, h13, M, I, 1, 2 * I, s, err);
}

extern "C" int moe_cuda_swiglu_bwd_ld(bf16_t *dh13, bf16_t *act, const bf16_t *dact, const bf16_t *h13, size_t M,
				      int I, int G, int ldg, cudaStream_t s, struct moe_error *err)
{
	int rc = swiglu_shape_ok(I, G, ldg, dh13, act, dact, h13, err);
	if (rc < 0 || M == 0)
		return rc;
	moe_launch(swiglu_bwd_kernel, moe_cdiv(M * (I / 8), 256), 256, 0, s, (bf16 *)dh13, (bf16 *)act,
		   (const bf16 *)dact, (const bf16 *)h13, M, I, G, ldg);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_swiglu_bwd(bf16_t *dh13, bf16_t *act, const bf16_t *dact, const bf16_t *h13, size_t M,
				   int I, cudaStream_t s, struct moe_error *err)
{
	return moe_cuda_swiglu_bwd_ld(dh13, act, dact, h13, M, I, 1, 2 * I, s, err);
}

extern "C" int moe_cuda_swiglu_bwd_rows(bf16_t *dh13, bf16_t *hw, float *dtopk_w, const bf16_t *du, const bf16_t *h13,
					const float *wg, const int32_t *perm, int M, int I, cudaStream_t s,
					struct moe_error *err)
{
	int rc = swiglu_shape_ok(I, 1, 2 * I, dh13, hw, du, h13, err);
	if (rc < 0 || M <= 0)
		return rc;
	/* R rows of tpr threads (whole warps, at most 256): at most 256 a block */
	const int tpr = I / 8 < 256 ? (I / 8 + 31) / 32 * 32 : 256, R = 256 / tpr;
	moe_launch(swiglu_bwd_rows_kernel, moe_cdiv((size_t)M, R), R * tpr, 0, s, (bf16 *)dh13, (bf16 *)hw, dtopk_w,
		   (const bf16 *)du, (const bf16 *)h13, wg, perm, M, I, tpr);
	return CUDA_LAUNCHED(err);
}
