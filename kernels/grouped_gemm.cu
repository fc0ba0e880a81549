/* Grouped (per-expert) GEMMs driven by the device offsets of the routing, so
 * that no host synchronisation is needed: bf16 WMMA tensor-core tiles of
 * 128 x 128 x 32, eight warps (64 x 32 each), a three-stage cp.async
 * pipeline, fp32 accumulation.  One kernel template covers the forward
 * (Y = X W_e^T), the input gradient (dX = dY W_e) and the weight gradient
 * (dW_e += dY_e^T X_e, reduction over the expert's rows, fp32 +=).
 * Warp layouts (template WM x WN warps): 2 x 2 warps of 64 x 64 (default) or
 * 2 x 4 warps of 64 x 32 (MOE_CUDA_GG_WARPS=8, kept for measurement).
 *
 * Block work: C(i, j) = sum_r A(i, r) B(r, j) over i < Mi, j < Nj, r < R with
 *   A(i, r) = AK ? A[i*lda + r] : A[r*lda + i]
 *   B(r, j) = BKC ? B[j*ldb + r] : B[r*ldb + j]
 * Out-of-range elements are zero-filled by cp.async, so any row count works;
 * column strides must be multiples of 8 (16-byte loads). */
#include <stdlib.h>

#include <mma.h>

#include "cuda_common.h"
#include "kernels.h"

using namespace nvcuda;

#define GB_M 128
#define GB_N 128
#define GB_K 32
#define GB_STAGES 3
#define GB_PAD 8

enum { GG_FWD = 0, GG_DGRAD = 1, GG_WGRAD = 2 };

struct gg_args {
	const bf16 *a, *b; /* X or dY; W or X */
	void *c;
	const int32_t *offsets;
	int E, In, Out;
};

static __device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool pred)
{
	unsigned s = (unsigned)__cvta_generic_to_shared(smem);
	int sz = pred ? 16 : 0;
	asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(sz));
}
static __device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> static __device__ __forceinline__ void cp_async_wait()
{
	asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* Shared tile sizes (elements) per stage. */
template <bool AK> struct a_tile {
	static constexpr int LD = AK ? GB_K + GB_PAD : GB_M + GB_PAD;
	static constexpr int SIZE = AK ? GB_M * LD : GB_K * LD;
};
template <bool BKC> struct b_tile {
	static constexpr int LD = BKC ? GB_K + GB_PAD : GB_N + GB_PAD;
	static constexpr int SIZE = BKC ? GB_N * LD : GB_K * LD;
};

template <bool AK, bool BKC, int NT>
static __device__ __forceinline__ void load_stage(bf16 *As, bf16 *Bs, const bf16 *A, int lda, const bf16 *B,
						  int ldb, int Mi, int Nj, int R, int k0)
{
	constexpr int ALD = a_tile<AK>::LD, BLD = b_tile<BKC>::LD;
	/* A: 128 x 32 elements = 512 chunks of 8 */
#pragma unroll
	for (int it = 0; it < 512 / NT; it++) {
		int c = threadIdx.x + it * NT;
		if (AK) {
			int i = c / (GB_K / 8), r = (c % (GB_K / 8)) * 8;
			bool ok = i < Mi && k0 + r < R;
			cp_async16(As + i * ALD + r, ok ? A + (size_t)i * lda + k0 + r : A, ok);
		} else {
			int r = c / (GB_M / 8), i = (c % (GB_M / 8)) * 8;
			bool ok = k0 + r < R && i < Mi;
			cp_async16(As + r * ALD + i, ok ? A + (size_t)(k0 + r) * lda + i : A, ok);
		}
	}
#pragma unroll
	for (int it = 0; it < 512 / NT; it++) {
		int c = threadIdx.x + it * NT;
		if (BKC) {
			int j = c / (GB_K / 8), r = (c % (GB_K / 8)) * 8;
			bool ok = j < Nj && k0 + r < R;
			cp_async16(Bs + j * BLD + r, ok ? B + (size_t)j * ldb + k0 + r : B, ok);
		} else {
			int r = c / (GB_N / 8), j = (c % (GB_N / 8)) * 8;
			bool ok = k0 + r < R && j < Nj;
			cp_async16(Bs + r * BLD + j, ok ? B + (size_t)(k0 + r) * ldb + j : B, ok);
		}
	}
}

template <int MODE, int WM, int WN>
__global__ void __launch_bounds__(WM * WN * 32) grouped_gemm_kernel(gg_args g)
{
	constexpr int NT = WM * WN * 32;
	constexpr int TM = GB_M / WM, TN = GB_N / WN; /* warp tile */
	constexpr int FM = TM / 16, FN = TN / 16;
	constexpr bool AK = MODE != GG_WGRAD;
	constexpr bool BKC = MODE == GG_FWD;
	constexpr int ALD = a_tile<AK>::LD, BLD = b_tile<BKC>::LD;
	constexpr int ASZ = a_tile<AK>::SIZE, BSZ = b_tile<BKC>::SIZE;
	extern __shared__ __align__(128) unsigned char smem[];
	bf16 *As = (bf16 *)smem, *Bs = As + GB_STAGES * ASZ;
	__shared__ int s_e, s_mt;

	const bf16 *A, *B;
	int lda, ldb, Mi, Nj, R, ldc;
	size_t c_off;
	int e, row0;
	if (MODE == GG_WGRAD) {
		e = blockIdx.z;
		row0 = g.offsets[e];
		R = g.offsets[e + 1] - row0;
		int it = blockIdx.x, jt = blockIdx.y;
		if (it * GB_M >= g.Out || jt * GB_N >= g.In)
			return;
		A = g.a + (size_t)row0 * g.Out + it * GB_M;
		lda = g.Out;
		Mi = g.Out - it * GB_M;
		B = g.b + (size_t)row0 * g.In + jt * GB_N;
		ldb = g.In;
		Nj = g.In - jt * GB_N;
		ldc = g.In;
		c_off = (size_t)e * g.Out * g.In + (size_t)it * GB_M * g.In + jt * GB_N;
	} else {
		/* find the expert and row tile of blockIdx.x */
		if (threadIdx.x == 0) {
			int t = blockIdx.x, found = -1, mt = 0;
			for (int x = 0; x < g.E; x++) {
				int tiles = (g.offsets[x + 1] - g.offsets[x] + GB_M - 1) / GB_M;
				if (t < tiles) {
					found = x;
					mt = t;
					break;
				}
				t -= tiles;
			}
			s_e = found;
			s_mt = mt;
		}
		__syncthreads();
		e = s_e;
		if (e < 0)
			return;
		int mt = s_mt, nt = blockIdx.y;
		row0 = g.offsets[e] + mt * GB_M;
		Mi = g.offsets[e + 1] - row0;
		int red = MODE == GG_FWD ? g.In : g.Out;   /* reduction length */
		int ncols = MODE == GG_FWD ? g.Out : g.In; /* output columns */
		if (nt * GB_N >= ncols)
			return;
		R = red;
		A = g.a + (size_t)row0 * red;
		lda = red;
		const bf16 *W = g.b + (size_t)e * g.Out * g.In;
		if (MODE == GG_FWD) {
			B = W + (size_t)nt * GB_N * g.In; /* B(r, j) = W[j, r] */
			ldb = g.In;
		} else {
			B = W + nt * GB_N; /* B(r, j) = W[r, j] */
			ldb = g.In;
		}
		Nj = ncols - nt * GB_N;
		ldc = ncols;
		c_off = (size_t)row0 * ncols + nt * GB_N;
	}

	int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
	int wm = warp / WN, wn = warp % WN;
	wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[FM][FN];
#pragma unroll
	for (int a = 0; a < FM; a++)
#pragma unroll
		for (int b = 0; b < FN; b++)
			wmma::fill_fragment(acc[a][b], 0.f);

	int KT = (R + GB_K - 1) / GB_K;
#pragma unroll
	for (int st = 0; st < GB_STAGES - 1; st++) {
		if (st < KT)
			load_stage<AK, BKC, NT>(As + st * ASZ, Bs + st * BSZ, A, lda, B, ldb, Mi, Nj, R,
						st * GB_K);
		cp_async_commit();
	}
	for (int kt = 0; kt < KT; kt++) {
		cp_async_wait<GB_STAGES - 2>();
		__syncthreads();
		int st = kt % GB_STAGES;
		const bf16 *as = As + st * ASZ, *bs = Bs + st * BSZ;
#pragma unroll
		for (int kk = 0; kk < GB_K; kk += 16) {
			typedef typename std::conditional<AK, wmma::row_major, wmma::col_major>::type ALay;
			typedef typename std::conditional<BKC, wmma::col_major, wmma::row_major>::type BLay;
			wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, ALay> fa[FM];
			wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, BLay> fb[FN];
#pragma unroll
			for (int a = 0; a < FM; a++) {
				int i = wm * TM + a * 16;
				wmma::load_matrix_sync(fa[a], AK ? as + i * ALD + kk : as + kk * ALD + i, ALD);
			}
#pragma unroll
			for (int b = 0; b < FN; b++) {
				int j = wn * TN + b * 16;
				wmma::load_matrix_sync(fb[b], BKC ? bs + j * BLD + kk : bs + kk * BLD + j, BLD);
			}
#pragma unroll
			for (int a = 0; a < FM; a++)
#pragma unroll
				for (int b = 0; b < FN; b++)
					wmma::mma_sync(acc[a][b], fa[a], fb[b], acc[a][b]);
		}
		int nk = kt + GB_STAGES - 1;
		if (nk < KT)
			load_stage<AK, BKC, NT>(As + (nk % GB_STAGES) * ASZ, Bs + (nk % GB_STAGES) * BSZ, A, lda,
						B, ldb, Mi, Nj, R, nk * GB_K);
		cp_async_commit();
	}
	cp_async_wait<0>();
	__syncthreads();

	/* epilogue: each warp stages one 16 x 16 fragment at a time */
	float *stg = (float *)smem + warp * 16 * 16;
	int r = lane / 2, c8 = (lane % 2) * 8;
#pragma unroll
	for (int a = 0; a < FM; a++)
#pragma unroll
		for (int b = 0; b < FN; b++) {
			wmma::store_matrix_sync(stg, acc[a][b], 16, wmma::mem_row_major);
			__syncwarp();
			int i = wm * TM + a * 16 + r, j = wn * TN + b * 16 + c8;
			if (i < Mi && j < Nj) {
				const float *v = stg + r * 16 + c8;
				if (MODE == GG_WGRAD) {
					float *C = (float *)g.c + c_off + (size_t)i * ldc + j;
#pragma unroll
					for (int q = 0; q < 8; q++)
						if (j + q < Nj)
							C[q] += v[q];
				} else {
					bf16 *C = (bf16 *)g.c + c_off + (size_t)i * ldc + j;
					if (j + 8 <= Nj) {
						uint4 o;
						bf16 *ob = (bf16 *)&o;
#pragma unroll
						for (int q = 0; q < 8; q++)
							ob[q] = f2bf(v[q]);
						*(uint4 *)C = o;
					} else {
						for (int q = 0; q < 8 && j + q < Nj; q++)
							C[q] = f2bf(v[q]);
					}
				}
			}
			__syncwarp();
		}
}

template <int MODE, int WM, int WN>
static int gg_launch_t(dim3 grid, const gg_args &g, cudaStream_t s, struct moe_error *err)
{
	constexpr bool AK = MODE != GG_WGRAD;
	constexpr bool BKC = MODE == GG_FWD;
	size_t smem = (size_t)GB_STAGES * (a_tile<AK>::SIZE + b_tile<BKC>::SIZE) * sizeof(bf16);
	size_t e = (size_t)(WM * WN) * 16 * 16 * sizeof(float);
	smem = smem > e ? smem : e;
	int rc;
	if ((rc = CUDA_OK(cudaFuncSetAttribute(grouped_gemm_kernel<MODE, WM, WN>,
					       cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
			  err)) != 0)
		return rc;
	grouped_gemm_kernel<MODE, WM, WN><<<grid, WM * WN * 32, smem, s>>>(g);
	return CUDA_LAUNCHED(err);
}

template <int MODE>
static int gg_launch(dim3 grid, const gg_args &g, cudaStream_t s, struct moe_error *err)
{
	static int warps = -1;
	if (warps < 0) {
		const char *v = getenv("MOE_CUDA_GG_WARPS");
		warps = v && atoi(v) == 8 ? 8 : 4;
	}
	if (warps == 8)
		return gg_launch_t<MODE, 2, 4>(grid, g, s, err);
	return gg_launch_t<MODE, 2, 2>(grid, g, s, err);
}

static int gg_check(int In, int Out, struct moe_error *err)
{
	if (In % 8 || Out % 8 || In <= 0 || Out <= 0)
		return moe_error_set(err, MOE_EUNSUPPORTED, "grouped gemm: In=%d Out=%d must be multiples of 8",
				     In, Out);
	return 0;
}

extern "C" int moe_cuda_grouped_fwd(bf16_t *out, const bf16_t *x, const bf16_t *w, const int32_t *offsets,
				    int max_rows, int E, int In, int Out, cudaStream_t s, struct moe_error *err)
{
	int rc;
	if ((rc = gg_check(In, Out, err)) != 0 || max_rows <= 0 || E <= 0)
		return rc;
	gg_args g = {(const bf16 *)x, (const bf16 *)w, out, offsets, E, In, Out};
	dim3 grid(moe_cdiv(max_rows, GB_M) + E, moe_cdiv(Out, GB_N));
	return gg_launch<GG_FWD>(grid, g, s, err);
}

extern "C" int moe_cuda_grouped_dgrad(bf16_t *dx, const bf16_t *dout, const bf16_t *w, const int32_t *offsets,
				      int max_rows, int E, int In, int Out, cudaStream_t s,
				      struct moe_error *err)
{
	int rc;
	if ((rc = gg_check(In, Out, err)) != 0 || max_rows <= 0 || E <= 0)
		return rc;
	gg_args g = {(const bf16 *)dout, (const bf16 *)w, dx, offsets, E, In, Out};
	dim3 grid(moe_cdiv(max_rows, GB_M) + E, moe_cdiv(In, GB_N));
	return gg_launch<GG_DGRAD>(grid, g, s, err);
}

extern "C" int moe_cuda_grouped_wgrad(float *dw, const bf16_t *dout, const bf16_t *x, const int32_t *offsets,
				      int E, int In, int Out, cudaStream_t s, struct moe_error *err)
{
	int rc;
	if ((rc = gg_check(In, Out, err)) != 0 || E <= 0)
		return rc;
	gg_args g = {(const bf16 *)dout, (const bf16 *)x, dw, offsets, E, In, Out};
	dim3 grid(moe_cdiv(Out, GB_M), moe_cdiv(In, GB_N), E);
	return gg_launch<GG_WGRAD>(grid, g, s, err);
}
