/* Grouped (per-expert) GEMMs driven by the device offsets of the routing, so
 * that no host synchronisation is needed: bf16 tensor-core tiles of
 * 128 x 128 x 32 (mma.sync m16n8k16 with ldmatrix fragments), four warps of
 * 64 x 64, a four-stage cp.async pipeline, fp32 accumulation.  One kernel
 * template covers the forward (Y = X W_e^T), the input gradient
 * (dX = dY W_e) and the weight gradient (dW_e += dY_e^T X_e, reduction over
 * the expert's rows, fp32 +=).  (An earlier WMMA 16x16x16 version of the
 * same tiling ran at 100-185 TFLOP/s against this one's 160-205 on an H100;
 * see tests/bench/RESULTS-cuda.md.)
 *
 * Block work: C(i, j) = sum_r A(i, r) B(r, j) over i < Mi, j < Nj, r < R with
 *   A(i, r) = AK ? A[i*lda + r] : A[r*lda + i]
 *   B(r, j) = BKC ? B[j*ldb + r] : B[r*ldb + j]
 * Out-of-range elements are zero-filled by cp.async, so any row count works;
 * column strides must be multiples of 8 (16-byte loads). */

#include "cuda_common.h"
#include "kernels.h"

#define GB_M 128
#define GB_N 128
#define GB_K 32
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

#define MS_STAGES 4

static __device__ __forceinline__ void gg_ldsm(unsigned *r, const bf16 *p)
{
	unsigned s = (unsigned)__cvta_generic_to_shared(p);
	asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
		     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
		     : "r"(s));
}

static __device__ __forceinline__ void gg_ldsm_t(unsigned *r, const bf16 *p)
{
	unsigned s = (unsigned)__cvta_generic_to_shared(p);
	asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
		     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
		     : "r"(s));
}

static __device__ __forceinline__ void gg_mma(float *c, const unsigned *a, unsigned b0, unsigned b1)
{
	asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
		     "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
		     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
		     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <int MODE>
__global__ void __launch_bounds__(128) grouped_mma_kernel(gg_args g)
{
	MOE_PDL_ENTRY();
	constexpr bool AK = MODE != GG_WGRAD;
	constexpr bool BKC = MODE == GG_FWD;
	constexpr int ALD = a_tile<AK>::LD, BLD = b_tile<BKC>::LD;
	constexpr int ASZ = a_tile<AK>::SIZE, BSZ = b_tile<BKC>::SIZE;
	extern __shared__ __align__(128) unsigned char smem[];
	bf16 *As = (bf16 *)smem, *Bs = As + MS_STAGES * ASZ;
	__shared__ int s_e, s_mt;

	const bf16 *A, *B;
	int lda, ldb, Mi, Nj, R, ldc;
	size_t c_off;
	if (MODE == GG_WGRAD) {
		int e = blockIdx.z, row0 = g.offsets[e];
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
		int e = s_e;
		if (e < 0)
			return;
		int mt = s_mt, nt = blockIdx.y;
		int row0 = g.offsets[e] + mt * GB_M;
		Mi = g.offsets[e + 1] - row0;
		int red = MODE == GG_FWD ? g.In : g.Out;
		int ncols = MODE == GG_FWD ? g.Out : g.In;
		if (nt * GB_N >= ncols)
			return;
		R = red;
		A = g.a + (size_t)row0 * red;
		lda = red;
		const bf16 *W = g.b + (size_t)e * g.Out * g.In;
		B = MODE == GG_FWD ? W + (size_t)nt * GB_N * g.In : W + nt * GB_N;
		ldb = g.In;
		Nj = ncols - nt * GB_N;
		ldc = ncols;
		c_off = (size_t)row0 * ncols + nt * GB_N;
	}

	int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
	int wm = warp / 2, wn = warp % 2; /* 2 x 2 warps, 64 x 64 each */
	float acc[4][8][4];
#pragma unroll
	for (int a = 0; a < 4; a++)
#pragma unroll
		for (int b = 0; b < 8; b++)
			acc[a][b][0] = acc[a][b][1] = acc[a][b][2] = acc[a][b][3] = 0.f;

	int KT = (R + GB_K - 1) / GB_K;
#pragma unroll
	for (int st = 0; st < MS_STAGES - 1; st++) {
		if (st < KT)
			load_stage<AK, BKC, 128>(As + st * ASZ, Bs + st * BSZ, A, lda, B, ldb, Mi, Nj, R, st * GB_K);
		cp_async_commit();
	}
	for (int kt = 0; kt < KT; kt++) {
		cp_async_wait<MS_STAGES - 2>();
		__syncthreads();
		int nk = kt + MS_STAGES - 1;
		if (nk < KT)
			load_stage<AK, BKC, 128>(As + (nk % MS_STAGES) * ASZ, Bs + (nk % MS_STAGES) * BSZ, A, lda, B,
						 ldb, Mi, Nj, R, nk * GB_K);
		cp_async_commit();
		const bf16 *as = As + (kt % MS_STAGES) * ASZ, *bs = Bs + (kt % MS_STAGES) * BSZ;
#pragma unroll
		for (int kk = 0; kk < GB_K; kk += 16) {
			unsigned fa[4][4], fb[8][2];
#pragma unroll
			for (int a = 0; a < 4; a++) {
				int i0 = wm * 64 + a * 16;
				if (AK)
					gg_ldsm(fa[a], as + (i0 + (lane % 8) + ((lane / 8) % 2) * 8) * ALD + kk + (lane / 16) * 8);
				else
					gg_ldsm_t(fa[a], as + (kk + (lane % 8) + (lane / 16) * 8) * ALD + i0 + ((lane / 8) % 2) * 8);
			}
#pragma unroll
			for (int b = 0; b < 8; b += 2) {
				int j0 = wn * 64 + b * 8;
				unsigned r4[4];
				if (BKC)
					gg_ldsm(r4, bs + (j0 + (lane % 8) + (lane / 16) * 8) * BLD + kk + ((lane / 8) % 2) * 8);
				else
					gg_ldsm_t(r4, bs + (kk + (lane % 8) + ((lane / 8) % 2) * 8) * BLD + j0 + (lane / 16) * 8);
				fb[b][0] = r4[0];
				fb[b][1] = r4[1];
				fb[b + 1][0] = r4[2];
				fb[b + 1][1] = r4[3];
			}
#pragma unroll
			for (int a = 0; a < 4; a++)
#pragma unroll
				for (int b = 0; b < 8; b++)
					gg_mma(acc[a][b], fa[a], fb[b][0], fb[b][1]);
		}
	}
	cp_async_wait<0>();

	int gq = lane / 4, t4 = lane % 4;
#pragma unroll
	for (int a = 0; a < 4; a++)
#pragma unroll
		for (int b = 0; b < 8; b++)
#pragma unroll
			for (int h = 0; h < 2; h++) {
				int i = wm * 64 + a * 16 + gq + h * 8, j = wn * 64 + b * 8 + 2 * t4;
				if (i >= Mi || j >= Nj)
					continue;
				float v0 = acc[a][b][2 * h], v1 = acc[a][b][2 * h + 1];
				if (MODE == GG_WGRAD) {
					float2 *C = (float2 *)((float *)g.c + c_off + (size_t)i * ldc + j);
					float2 o = *C;
					o.x += v0;
					o.y += v1;
					*C = o;
				} else {
					*(__nv_bfloat162 *)((bf16 *)g.c + c_off + (size_t)i * ldc + j) =
						__floats2bfloat162_rn(v0, v1);
				}
			}
}

template <int MODE>
static int gg_launch_mma(dim3 grid, const gg_args &g, cudaStream_t s, struct moe_error *err)
{
	constexpr bool AK = MODE != GG_WGRAD;
	constexpr bool BKC = MODE == GG_FWD;
	size_t smem = (size_t)MS_STAGES * (a_tile<AK>::SIZE + b_tile<BKC>::SIZE) * sizeof(bf16);
	int rc;
	if ((rc = CUDA_OK(cudaFuncSetAttribute(grouped_mma_kernel<MODE>, cudaFuncAttributeMaxDynamicSharedMemorySize,
					       (int)smem),
			  err)) != 0)
		return rc;
	moe_launch(grouped_mma_kernel<MODE>, grid, 128, smem, s, g);
	return CUDA_LAUNCHED(err);
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
	return gg_launch_mma<GG_FWD>(grid, g, s, err);
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
	return gg_launch_mma<GG_DGRAD>(grid, g, s, err);
}

extern "C" int moe_cuda_grouped_wgrad(float *dw, const bf16_t *dout, const bf16_t *x, const int32_t *offsets,
				      int E, int In, int Out, cudaStream_t s, struct moe_error *err)
{
	int rc;
	if ((rc = gg_check(In, Out, err)) != 0 || E <= 0)
		return rc;
	gg_args g = {(const bf16 *)dout, (const bf16 *)x, dw, offsets, E, In, Out};
	dim3 grid(moe_cdiv(Out, GB_M), moe_cdiv(In, GB_N), E);
	return gg_launch_mma<GG_WGRAD>(grid, g, s, err);
}
