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

/* swiglu_bwd_rows' work on one 16-byte vector of a row (8 columns) with
 * its gate weight w: dg, du from dh = w du, bf16(w h); returns dot with
 * du . bf16(h) added column by column */
static __device__ __forceinline__ float sw_rows_vec(uint4 gv, uint4 uv, uint4 dv, float w, uint4 *dgv, uint4 *duv,
						    uint4 *ov, float dot)
{
	const bf16 *ga = (const bf16 *)&gv, *ua = (const bf16 *)&uv, *da = (const bf16 *)&dv;
	bf16 *dga = (bf16 *)dgv, *dua = (bf16 *)duv, *oa = (bf16 *)ov;
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
	return dot;
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
			uint4 dgv, duv, ov;
			dot = sw_rows_vec(g[c], u[c], d[c], w, &dgv, &duv, &ov, dot);
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

/* swiglu_bwd_rows_kernel's work where a row's vectors fit one lane step
 * (I / 8 <= 256: every thread of it one vector), with 16 lanes a row: lane
 * l takes the vectors that the warp layout gives to its threads t = l + 16
 * q (q < Q = 2 tpr / 32), two vectors at a time, and
 * sums the dot in that layout's order: each thread's 8 products in column
 * order, a warp's 32 by the butterfly (its first step, t with t ^ 16, is
 * the lane's own pair q, q + 1; then xor 8, 4, 2, 1 among the 16 lanes),
 * the warps in order.  So every output is the same bits as the warp
 * layout's, with all lanes busy (at seed-base's I = 640 that layout leaves
 * 16 of 96 threads a row idle) and 256-thread blocks. */
template <int Q>
__global__ void __launch_bounds__(256)
	swiglu_bwd_rows16_kernel(bf16 *__restrict__ dh13, bf16 *__restrict__ hw, float *__restrict__ dtopk_w,
				 const bf16 *__restrict__ du, const bf16 *__restrict__ h13, const float *__restrict__ wg,
				 const int32_t *__restrict__ perm, int M, int I)
{
	MOE_PDL_ENTRY();
	const int per = I / 8, l = threadIdx.x % 16;
	const int j = blockIdx.x * (blockDim.x / 16) + threadIdx.x / 16;
	float p[Q]; /* p[q]: the dot of the warp layout's thread l + 16 q */
#pragma unroll
	for (int q = 0; q < Q; q++)
		p[q] = 0.f;
	if (j < M) {
		const float w = __ldg(wg + j);
		const uint4 *g = (const uint4 *)(h13 + (size_t)j * 2 * I), *u = g + per;
		const uint4 *d = (const uint4 *)(du + (size_t)j * I);
		uint4 *dg = (uint4 *)(dh13 + (size_t)j * 2 * I), *dd = dg + per, *ho = (uint4 *)(hw + (size_t)j * I);
		/* two vectors at a time (more kept in flight cost registers,
		 * and so occupancy) */
#pragma unroll
		for (int q0 = 0; q0 < Q; q0 += 2) {
			uint4 gv[2], uv[2], dv[2];
#pragma unroll
			for (int e = 0; e < 2; e++) {
				const int c = l + 16 * (q0 + e);
				if (c < per) {
					gv[e] = g[c];
					uv[e] = u[c];
					dv[e] = d[c];
				}
			}
#pragma unroll
			for (int e = 0; e < 2; e++) {
				const int c = l + 16 * (q0 + e);
				if (c >= per)
					continue;
				uint4 dgv, duv, ov;
				p[q0 + e] = sw_rows_vec(gv[e], uv[e], dv[e], w, &dgv, &duv, &ov, 0.f);
				dg[c] = dgv;
				dd[c] = duv;
				ho[c] = ov;
			}
		}
	}
	float s = 0.f;
#pragma unroll
	for (int q = 0; q < Q; q += 2) {
		float v = p[q] + p[q + 1];
#pragma unroll
		for (int o = 8; o > 0; o >>= 1)
			v += __shfl_xor_sync(0xffffffffu, v, o);
		s += v;
	}
	if (l == 0 && j < M)
		dtopk_w[__ldg(perm + j)] = s;
}

/* moe_cuda_swiglu_rows_layout(1): swiglu_bwd_rows_kernel at every width
 * (tests: the two layouts' bits compared) */
static int sw_warp_rows;

extern "C" void moe_cuda_swiglu_rows_layout(int warp_rows) { sw_warp_rows = warp_rows; }

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
	if (I / 8 <= 256 && !sw_warp_rows) { /* 16 lanes a row, 16 rows a block */
		/* Q = 2 tpr / 32 vectors a lane: tpr / 32 warps of the warp layout */
		static void (*const rows16[])(bf16 *, bf16 *, float *, const bf16 *, const bf16 *, const float *,
					      const int32_t *, int, int) = {
			swiglu_bwd_rows16_kernel<2>,  swiglu_bwd_rows16_kernel<4>,  swiglu_bwd_rows16_kernel<6>,
			swiglu_bwd_rows16_kernel<8>,  swiglu_bwd_rows16_kernel<10>, swiglu_bwd_rows16_kernel<12>,
			swiglu_bwd_rows16_kernel<14>, swiglu_bwd_rows16_kernel<16>};
		moe_launch(rows16[tpr / 32 - 1], moe_cdiv((size_t)M, 16), 256, 0, s, (bf16 *)dh13, (bf16 *)hw, dtopk_w,
			   (const bf16 *)du, (const bf16 *)h13, wg, perm, M, I);
		return CUDA_LAUNCHED(err);
	}
	moe_launch(swiglu_bwd_rows_kernel, moe_cdiv((size_t)M, R), R * tpr, 0, s, (bf16 *)dh13, (bf16 *)hw, dtopk_w,
		   (const bf16 *)du, (const bf16 *)h13, wg, perm, M, I, tpr);
	return CUDA_LAUNCHED(err);
}
